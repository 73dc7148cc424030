//! Structural-schema handling of custom resources: pruning, defaulting, OpenAPI v3 value
//! validation and `x-kubernetes-validations` CEL rules (through kube's `cel` feature).

use kube::core::cel::{CompiledSchema, ErrorKind, RootContext, Validator, apply_defaults};
use serde_json::{Map, Value};

use super::error::{FieldError, display_value};

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Drops fields the schema does not declare (recording their paths) and nulls of
/// non-nullable fields, as kube-apiserver does for structural schemas.
pub(crate) fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let root = path.is_empty();
    match v {
        Value::Object(map) => {
            if is_true(&schema["x-kubernetes-int-or-string"]) {
                return;
            }
            let props = schema["properties"].as_object();
            let addl = &schema["additionalProperties"];
            let preserve = is_true(&schema["x-kubernetes-preserve-unknown-fields"]);
            if is_true(&schema["x-kubernetes-embedded-resource"]) {
                // apiVersion, kind and metadata of embedded objects are always kept.
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if root && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(if addl.is_object() {
                    Some(addl)
                } else {
                    None
                });
                match sub {
                    Some(sub) => {
                        let drop_null =
                            map.get(&k).is_some_and(Value::is_null) && !is_true(&sub["nullable"]);
                        if drop_null {
                            map.remove(&k);
                        } else if let Some(cv) = map.get_mut(&k) {
                            prune(sub, cv, &child(path, &k), unknown);
                        }
                    }
                    None => {
                        if !preserve && !is_true(addl) {
                            map.remove(&k);
                            unknown.push(format!(".{}", child(path, &k)));
                        }
                    }
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, it) in items.iter_mut().enumerate() {
                prune(&schema["items"], it, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Applies schema defaults.
pub(crate) fn default(schema: &Value, v: &Value) -> Value {
    apply_defaults(schema, v)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_num(v: &Value) -> String {
    v.to_string()
}

/// OpenAPI v3 value validation of `v` at `path`.
pub(crate) fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let root = path.is_empty();
    if v.is_null() {
        if is_true(&schema["nullable"]) {
            return;
        }
        if let Some(t) = schema["type"].as_str() {
            errs.push(FieldError::new(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"null\": {path} in body must be of type {t}: \"null\""),
            ));
        }
        return;
    }
    let int_or_string = is_true(&schema["x-kubernetes-int-or-string"]);
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(v);
        let ok = match t {
            "number" => actual == "number" || actual == "integer",
            "integer" => {
                actual == "integer"
                    || v.as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
            }
            other => other == actual,
        };
        if !ok {
            errs.push(FieldError::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
                ),
            ));
            return;
        }
    } else if int_or_string && !(v.is_string() || type_name(v) == "integer") {
        let actual = type_name(v);
        errs.push(FieldError::new(
            "FieldValueTypeInvalid",
            path,
            format!(
                "Invalid value: \"{actual}\": {path} in body must be of type integer,string: \"{actual}\""
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        errs.push(FieldError::new(
            "FieldValueNotSupported",
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                v,
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::String(s) => validate_string(schema, s, v, path, errs),
        Value::Number(_) => validate_number(schema, v, path, errs),
        Value::Array(items) => validate_array(schema, items, v, path, errs),
        Value::Object(map) => validate_object(schema, map, path, root, errs),
        _ => {}
    }
    for sub in schema["allOf"].as_array().into_iter().flatten() {
        validate(sub, v, path, errs);
    }
    let passes = |sub: &Value| {
        let mut e = vec![];
        validate(sub, v, path, &mut e);
        e.is_empty()
    };
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(passes)
    {
        errs.push(FieldError::invalid(
            path,
            &Value::String(type_name(v).into()),
            &format!("{path} in body must be valid against at least one schema (anyOf)"),
        ));
    }
    if let Some(one) = schema["oneOf"].as_array() {
        let n = one.iter().filter(|s| passes(s)).count();
        if n != 1 {
            errs.push(FieldError::invalid(
                path,
                &Value::String(type_name(v).into()),
                &format!("{path} in body must validate one and only one schema (oneOf)"),
            ));
        }
    }
    if schema["not"].is_object() && passes(&schema["not"]) {
        errs.push(FieldError::invalid(
            path,
            &Value::String(type_name(v).into()),
            &format!("{path} in body should not validate the schema (not)"),
        ));
    }
}

fn validate_string(schema: &Value, s: &str, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(max) = schema["maxLength"].as_u64()
        && s.chars().count() as u64 > max
    {
        errs.push(FieldError::new(
            "FieldValueTooLong",
            path,
            format!(
                "Too long: may not be more than {max} {}",
                if max == 1 { "byte" } else { "bytes" }
            ),
        ));
    }
    if let Some(min) = schema["minLength"].as_u64()
        && (s.chars().count() as u64) < min
    {
        errs.push(FieldError::invalid(
            path,
            v,
            &format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some(p) = schema["pattern"].as_str() {
        match cached_regex(p) {
            Ok(re) if !re.is_match(s) => errs.push(FieldError::invalid(
                path,
                v,
                &format!("{path} in body should match '{p}'"),
            )),
            Ok(_) => {}
            Err(_) => errs.push(FieldError::invalid(
                path,
                v,
                &format!("{path}: schema pattern '{p}' does not compile"),
            )),
        }
    }
    if let Some(f) = schema["format"].as_str() {
        let ok = match f {
            "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
            "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
            "uuid" => uuid::Uuid::parse_str(s).is_ok(),
            "byte" => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(s).is_ok()
            }
            _ => true,
        };
        if !ok {
            errs.push(FieldError::invalid(
                path,
                v,
                &format!("{path} in body must be of type {f}: {}", display_value(v)),
            ));
        }
    }
}

fn validate_number(schema: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(x) = num(v) else { return };
    if let Some(min) = num(&schema["minimum"]) {
        let excl = is_true(&schema["exclusiveMinimum"]);
        if (excl && x <= min) || (!excl && x < min) {
            let op = if excl {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(FieldError::invalid(
                path,
                v,
                &format!(
                    "{path} in body should be {op} {}",
                    fmt_num(&schema["minimum"])
                ),
            ));
        }
    }
    if let Some(max) = num(&schema["maximum"]) {
        let excl = is_true(&schema["exclusiveMaximum"]);
        if (excl && x >= max) || (!excl && x > max) {
            let op = if excl {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(FieldError::invalid(
                path,
                v,
                &format!(
                    "{path} in body should be {op} {}",
                    fmt_num(&schema["maximum"])
                ),
            ));
        }
    }
    if let Some(m) = num(&schema["multipleOf"])
        && m != 0.0
        && (x / m).fract() != 0.0
    {
        errs.push(FieldError::invalid(
            path,
            v,
            &format!(
                "{path} in body should be a multiple of {}",
                fmt_num(&schema["multipleOf"])
            ),
        ));
    }
}

fn validate_array(
    schema: &Value,
    items: &[Value],
    v: &Value,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if let Some(max) = schema["maxItems"].as_u64()
        && items.len() as u64 > max
    {
        errs.push(FieldError::new(
            "FieldValueTooMany",
            path,
            format!(
                "Too many: {}: must have at most {max} {}",
                items.len(),
                if max == 1 { "item" } else { "items" }
            ),
        ));
    }
    if let Some(min) = schema["minItems"].as_u64()
        && (items.len() as u64) < min
    {
        errs.push(FieldError::invalid(
            path,
            &Value::from(items.len()),
            &format!("{path} in body should have at least {min} items"),
        ));
    }
    let list_type = schema["x-kubernetes-list-type"].as_str();
    if is_true(&schema["uniqueItems"]) || list_type == Some("set") {
        for (i, it) in items.iter().enumerate() {
            if items[..i].contains(it) {
                errs.push(FieldError::new(
                    "FieldValueDuplicate",
                    &format!("{path}[{i}]"),
                    format!("Duplicate value: {}", display_value(it)),
                ));
            }
        }
    }
    if list_type == Some("map") {
        let keys: Vec<String> = schema["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        let key_of = |it: &Value| -> Vec<Value> { keys.iter().map(|k| it[k].clone()).collect() };
        for (i, it) in items.iter().enumerate() {
            if items[..i].iter().any(|o| key_of(o) == key_of(it)) {
                let m: Map<String, Value> =
                    keys.iter().map(|k| (k.clone(), it[k].clone())).collect();
                errs.push(FieldError::new(
                    "FieldValueDuplicate",
                    &format!("{path}[{i}]"),
                    format!("Duplicate value: {}", Value::Object(m)),
                ));
            }
        }
    }
    let _ = v;
    if schema["items"].is_object() {
        for (i, it) in items.iter().enumerate() {
            validate(&schema["items"], it, &format!("{path}[{i}]"), errs);
        }
    }
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    errs: &mut Vec<FieldError>,
) {
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str()
            && !map.contains_key(r)
        {
            errs.push(FieldError::required(&child(path, r)));
        }
    }
    if let Some(max) = schema["maxProperties"].as_u64()
        && map.len() as u64 > max
    {
        errs.push(FieldError::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {}: must have at most {max} items", map.len()),
        ));
    }
    if let Some(min) = schema["minProperties"].as_u64()
        && (map.len() as u64) < min
    {
        errs.push(FieldError::invalid(
            path,
            &Value::from(map.len()),
            &format!("{path} in body should have at least {min} properties"),
        ));
    }
    let props = schema["properties"].as_object();
    for (k, cv) in map {
        if root && k == "metadata" {
            continue;
        }
        let key_path = if props.is_some_and(|p| p.contains_key(k)) {
            child(path, k)
        } else {
            format!("{path}[{k}]")
        };
        if let Some(sub) = props.and_then(|p| p.get(k)) {
            validate(sub, cv, &key_path, errs);
        } else if schema["additionalProperties"].is_object() {
            validate(&schema["additionalProperties"], cv, &key_path, errs);
        }
    }
}

/// Evaluates the `x-kubernetes-validations` rules (transition rules only when `old` is given).
pub(crate) fn validate_cel(
    compiled: &CompiledSchema,
    obj: &Value,
    old: Option<&Value>,
    root: RootContext,
) -> Vec<FieldError> {
    thread_local! {
        static VALIDATOR: Validator = Validator::new();
    }
    let result =
        VALIDATOR.with(|v| v.validate_compiled_with_context(compiled, obj, old, Some(&root)));
    match result {
        Ok(()) => vec![],
        Err(errs) => errs
            .into_vec()
            .into_iter()
            .map(|e| {
                let type_str = Value::String(
                    value_at_path(obj, &e.field_path)
                        .map(type_name)
                        .unwrap_or("object")
                        .to_string(),
                );
                let message = match e.kind {
                    ErrorKind::ValidationFailure => e.message.clone(),
                    _ => format!("{} (rule: {})", e.message, e.rule),
                };
                let reason = e
                    .reason
                    .clone()
                    .unwrap_or_else(|| "FieldValueInvalid".into());
                let detail = match reason.as_str() {
                    "FieldValueForbidden" => format!("Forbidden: {message}"),
                    "FieldValueRequired" => format!("Required value: {message}"),
                    "FieldValueDuplicate" => {
                        format!("Duplicate value: {}: {message}", display_value(&type_str))
                    }
                    _ => format!("Invalid value: {}: {message}", display_value(&type_str)),
                };
                let mut fe = FieldError::new(&reason, &e.field_path, detail);
                if e.rule.contains("oldSelf") {
                    // transition rules are never ratcheted
                    fe.reason = format!("{}\u{0}transition", fe.reason);
                }
                fe
            })
            .collect(),
    }
}

/// Resolves `spec.a[0].b` / `spec.labels[key]` paths.
pub(crate) fn value_at_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    if path.is_empty() {
        return Some(cur);
    }
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let idx = &r[..end];
            cur = match cur {
                Value::Array(a) => a.get(idx.parse::<usize>().ok()?)?,
                Value::Object(m) => m.get(idx)?,
                _ => return None,
            };
            rest = &r[end + 1..];
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?;
        rest = &rest[end..];
    }
    Some(cur)
}

/// Full validation of a custom resource, in kube-apiserver's order: OpenAPI schema, then the
/// CEL rules unless a blocking schema error (wrong type, required, enum, too long, too many)
/// makes them moot. `old` enables transition rules and ratcheting (errors on values unchanged
/// from the old object are dropped, as CRDValidationRatcheting does).
pub(crate) fn validate_custom(
    schema: &Value,
    compiled: Option<&CompiledSchema>,
    obj: &Value,
    old: Option<&Value>,
    root: RootContext,
) -> Vec<FieldError> {
    let mut errs = vec![];
    validate(schema, obj, "", &mut errs);
    ratchet(&mut errs, obj, old);
    const BLOCKING: [&str; 5] = [
        "FieldValueNotSupported",
        "FieldValueRequired",
        "FieldValueTooLong",
        "FieldValueTooMany",
        "FieldValueTypeInvalid",
    ];
    if errs.iter().any(|e| BLOCKING.contains(&e.reason.as_str())) {
        errs.push(FieldError::new(
            "FieldValueInvalid",
            "<nil>",
            "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ));
        return errs;
    }
    if let Some(compiled) = compiled {
        let mut cel = validate_cel(compiled, obj, old, root);
        ratchet(&mut cel, obj, old);
        for e in &mut cel {
            if let Some(r) = e.reason.strip_suffix("\u{0}transition") {
                e.reason = r.to_string();
            }
        }
        errs.extend(cel);
    }
    errs
}

fn ratchet(errs: &mut Vec<FieldError>, obj: &Value, old: Option<&Value>) {
    let Some(old) = old else { return };
    errs.retain(|e| {
        if e.reason.ends_with("\u{0}transition") {
            return true;
        }
        match (value_at_path(obj, &e.field), value_at_path(old, &e.field)) {
            (Some(a), Some(b)) => a != b,
            _ => true,
        }
    });
}

const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// metadata.name checks (RFC 1123 subdomain, or label for namespaces).
pub(crate) fn validate_name(name: &str, label_only: bool) -> Option<FieldError> {
    let (re, max, what) = if label_only {
        (
            DNS1123_LABEL,
            63,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        )
    } else {
        (
            DNS1123_SUBDOMAIN,
            253,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        )
    };
    let ok = regex::Regex::new(re)
        .map(|r| r.is_match(name))
        .unwrap_or(false);
    if name.len() > max {
        return Some(FieldError::invalid(
            "metadata.name",
            &Value::String(name.into()),
            &format!("must be no more than {max} characters"),
        ));
    }
    (!ok).then(|| FieldError::invalid("metadata.name", &Value::String(name.into()), what))
}

/// Compiled regexes by pattern (schema patterns repeat on every write).
fn cached_regex(p: &str) -> Result<regex::Regex, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache.lock().ok().and_then(|c| c.get(p).cloned()) {
        return Ok(r);
    }
    let r = regex::Regex::new(p)?;
    if let Ok(mut c) = cache.lock() {
        if c.len() > 4096 {
            c.clear();
        }
        c.insert(p.to_string(), r.clone());
    }
    Ok(r)
}

/// CEL compilation errors anywhere in a compiled schema, with the schema path of their rules
/// (kube-apiserver rejects such a CRD when it is created or updated).
pub(crate) fn cel_compile_errors(c: &CompiledSchema, path: &str, out: &mut Vec<(String, String)>) {
    for e in c.compilation_errors() {
        out.push((format!("{path}.x-kubernetes-validations"), e.to_string()));
    }
    for (k, sub) in &c.properties {
        cel_compile_errors(sub, &format!("{path}.properties[{k}]"), out);
    }
    if let Some(items) = &c.items {
        cel_compile_errors(items, &format!("{path}.items"), out);
    }
    if let Some(ap) = &c.additional_properties {
        cel_compile_errors(ap, &format!("{path}.additionalProperties"), out);
    }
    for (name, subs) in [
        ("allOf", &c.all_of),
        ("oneOf", &c.one_of),
        ("anyOf", &c.any_of),
    ] {
        for (i, sub) in subs.iter().enumerate() {
            cel_compile_errors(sub, &format!("{path}.{name}[{i}]"), out);
        }
    }
}

const QUALIFIED_NAME: &str = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";
const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// apimachinery's IsQualifiedName: `[prefix/]name`; returns the problems found.
fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut out = vec![];
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !cached_regex(QUALIFIED_NAME).is_ok_and(|r| r.is_match(name)) {
        out.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push("prefix part must be non-empty".to_string());
        } else if p.len() > 253 || !cached_regex(DNS1123_SUBDOMAIN).is_ok_and(|r| r.is_match(p)) {
            out.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
        }
    }
    out
}

/// ObjectMeta checks every kind gets: label keys and values, annotation keys and total size,
/// finalizer names.
pub(crate) fn validate_object_meta(md: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    for (k, v) in md["labels"].as_object().into_iter().flatten() {
        for e in qualified_name_errors(k) {
            errs.push(FieldError::invalid(
                "metadata.labels",
                &Value::String(k.clone()),
                &e,
            ));
        }
        let val = v.as_str().unwrap_or_default();
        if val.len() > 63 {
            errs.push(FieldError::invalid(
                "metadata.labels",
                v,
                "must be no more than 63 characters",
            ));
        }
        if !cached_regex(LABEL_VALUE).is_ok_and(|r| r.is_match(val)) {
            errs.push(FieldError::invalid("metadata.labels", v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"));
        }
    }
    let mut total = 0usize;
    for (k, v) in md["annotations"].as_object().into_iter().flatten() {
        for e in qualified_name_errors(&k.to_lowercase()) {
            errs.push(FieldError::invalid(
                "metadata.annotations",
                &Value::String(k.clone()),
                &e,
            ));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > 256 * 1024 {
        errs.push(FieldError::new(
            "FieldValueTooLong",
            "metadata.annotations",
            "Too long: must have at most 262144 bytes",
        ));
    }
    for (i, f) in md["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = f.as_str().unwrap_or_default();
        for e in qualified_name_errors(name) {
            errs.push(FieldError::invalid(
                &format!("metadata.finalizers[{i}]"),
                f,
                &e,
            ));
        }
    }
    errs
}
