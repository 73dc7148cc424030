//! Structural-schema handling of custom resources: pruning, defaulting, OpenAPI v3 value
//! validation and `x-kubernetes-validations` CEL rules (through kube's `cel` feature).

use kube::core::cel::{
    CompiledSchema, ErrorKind, RootContext, Validator, apply_defaults, compile_schema,
};
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

/// A CRD version's `x-kubernetes-validations`, compiled once: for the whole object and, when the
/// root has no rules of its own, also per top-level property, so that an update evaluates the
/// rules of a property it leaves unchanged only where their outcome can matter.
pub(crate) struct CelRules {
    pub full: CompiledSchema,
    /// By property name, sorted; None when the schema cannot be split (rules, composition or
    /// additionalProperties at the root).
    parts: Option<Vec<CelPart>>,
}

impl std::fmt::Debug for CelRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelRules")
            .field("parts", &self.parts.as_ref().map(Vec::len))
            .finish()
    }
}

struct CelPart {
    name: String,
    /// The root with only this property; None when no rule lies under it.
    all: Option<CompiledSchema>,
    /// Same, with only the rules whose errors ratcheting may keep when the property is
    /// unchanged (see [`keep_when_unchanged`]); None when there are none.
    unchanged: Option<CompiledSchema>,
}

/// Number of rules (compiled or not) in a compiled schema tree.
fn rule_count(c: &CompiledSchema) -> usize {
    c.validations.len()
        + c.properties.values().map(rule_count).sum::<usize>()
        + c.items.as_deref().map_or(0, rule_count)
        + c.additional_properties.as_deref().map_or(0, rule_count)
        + c.all_of
            .iter()
            .chain(&c.one_of)
            .chain(&c.any_of)
            .map(rule_count)
            .sum::<usize>()
}

/// Drops the subtrees of a compiled schema that hold no rule, below nodes that hold none: the
/// validator would walk them, converting their values at every level, for nothing. (Under a
/// node with rules everything stays: its rules see the whole value, converted by the schema.)
fn prune_ruleless(c: &mut CompiledSchema) {
    if !c.validations.is_empty() {
        return;
    }
    c.properties.retain(|_, sub| rule_count(sub) > 0);
    for sub in c.properties.values_mut() {
        prune_ruleless(sub);
    }
    for slot in [&mut c.items, &mut c.additional_properties] {
        if slot.as_deref().is_some_and(|x| rule_count(x) == 0) {
            *slot = None;
        }
        if let Some(x) = slot.as_deref_mut() {
            prune_ruleless(x);
        }
    }
    for subs in [&mut c.all_of, &mut c.one_of, &mut c.any_of] {
        subs.retain(|x| rule_count(x) > 0);
        for x in subs.iter_mut() {
            prune_ruleless(x);
        }
    }
}

/// [`compile_schema`], then [`prune_ruleless`].
fn compile_pruned(schema: &Value) -> CompiledSchema {
    let mut c = compile_schema(schema);
    prune_ruleless(&mut c);
    c
}

/// Rules whose errors [`ratchet`] could keep although the value they sit on is unchanged:
/// transition rules (by the same test `validate_cel` uses), rules reporting at another path
/// (`fieldPath`), and rules at paths `value_at_path` may not resolve (map values, property
/// names with `.`, `[` or `]`). Every other rule on an unchanged value only yields errors that
/// ratcheting drops, so it need not run.
fn keep_when_unchanged(rule: &Value, awkward_path: bool) -> bool {
    awkward_path
        || rule["rule"].as_str().is_none_or(|r| r.contains("oldSelf"))
        || rule.get("fieldPath").is_some_and(|f| !f.is_null())
}

/// `schema` with only the rules [`keep_when_unchanged`] keeps.
fn unchanged_rules(schema: &Value, awkward: bool) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let nv = match k.as_str() {
            "x-kubernetes-validations" => match v.as_array() {
                Some(rules) => Value::Array(
                    rules
                        .iter()
                        .filter(|r| keep_when_unchanged(r, awkward))
                        .cloned()
                        .collect(),
                ),
                None => v.clone(),
            },
            "properties" => match v.as_object() {
                Some(props) => Value::Object(
                    props
                        .iter()
                        .map(|(name, sub)| {
                            let odd = awkward || name.contains(['.', '[', ']']);
                            (name.clone(), unchanged_rules(sub, odd))
                        })
                        .collect(),
                ),
                None => v.clone(),
            },
            "items" => unchanged_rules(v, awkward),
            "additionalProperties" => unchanged_rules(v, true),
            "allOf" | "oneOf" | "anyOf" => match v.as_array() {
                Some(subs) => {
                    Value::Array(subs.iter().map(|x| unchanged_rules(x, awkward)).collect())
                }
                None => v.clone(),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), nv);
    }
    Value::Object(out)
}

impl CelRules {
    pub fn compile(schema: &Value) -> CelRules {
        CelRules {
            full: compile_pruned(schema),
            parts: Self::split(schema),
        }
    }

    fn split(schema: &Value) -> Option<Vec<CelPart>> {
        let root = schema.as_object()?;
        let splittable = root
            .get("x-kubernetes-validations")
            .is_none_or(|v| v.as_array().is_some_and(Vec::is_empty))
            && ["allOf", "oneOf", "anyOf", "additionalProperties"]
                .iter()
                .all(|k| {
                    root.get(*k)
                        .is_none_or(|v| v.is_null() || *v == Value::Bool(false))
                });
        if !splittable {
            return None;
        }
        let props = root.get("properties")?.as_object()?;
        let mut parts = Vec::new();
        for (name, sub) in props {
            let odd = name.contains(['.', '[', ']']);
            let one = |sub: Value| {
                let mut props = Map::new();
                props.insert(name.clone(), sub);
                let c = compile_pruned(&serde_json::json!({"type": "object", "properties": props}));
                (rule_count(&c) > 0).then_some(c)
            };
            parts.push(CelPart {
                name: name.clone(),
                all: one(sub.clone()),
                unchanged: one(unchanged_rules(sub, odd)),
            });
        }
        parts.sort_by(|a, b| a.name.cmp(&b.name));
        Some(parts)
    }
}

/// CEL validation of an update, property by property: a top-level property equal to its old
/// value runs only the rules whose errors ratcheting could keep. The errors that survive
/// [`ratchet`] are the same as with the whole object at once.
fn validate_cel_update(
    rules: &CelRules,
    obj: &Value,
    old: &Value,
    root: &RootContext,
) -> Vec<FieldError> {
    let Some(parts) = &rules.parts else {
        return validate_cel(&rules.full, obj, Some(old), root.clone());
    };
    let mut out = vec![];
    for part in parts {
        let v = obj.get(&part.name);
        let o = old.get(&part.name);
        let compiled = if v == o {
            part.unchanged.as_ref()
        } else {
            part.all.as_ref()
        };
        let Some(compiled) = compiled else {
            continue;
        };
        let wrap = |x: Option<&Value>| {
            let mut m = Map::new();
            if let Some(x) = x {
                m.insert(part.name.clone(), x.clone());
            }
            Value::Object(m)
        };
        out.extend(validate_cel(
            compiled,
            &wrap(v),
            Some(&wrap(o)),
            root.clone(),
        ));
    }
    out
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
    compiled: Option<&CelRules>,
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
        let mut cel = match old {
            Some(old) => validate_cel_update(compiled, obj, old, &root),
            None => validate_cel(&compiled.full, obj, None, root),
        };
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
    let ok = cached_regex(re).is_ok_and(|r| r.is_match(name));
    if name.len() > max {
        return Some(FieldError::invalid(
            "metadata.name",
            &Value::String(name.into()),
            &format!("must be no more than {max} characters"),
        ));
    }
    (!ok).then(|| FieldError::invalid("metadata.name", &Value::String(name.into()), what))
}

/// Compiled regexes by pattern (schema patterns repeat on every write). Shared, not cloned: a
/// clone of a `Regex` starts with an empty matching cache.
fn cached_regex(p: &str) -> Result<std::sync::Arc<regex::Regex>, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache.lock().ok().and_then(|c| c.get(p).cloned()) {
        return Ok(r);
    }
    let r = Arc::new(regex::Regex::new(p)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(errs: Vec<FieldError>) -> Vec<String> {
        let mut v: Vec<String> = errs
            .into_iter()
            .map(|e| {
                let reason = e.reason.trim_end_matches("\u{0}transition").to_string();
                format!("{reason} {}: {}", e.field, e.detail)
            })
            .collect();
        v.sort();
        v
    }

    /// Errors left after ratcheting, as `reason field: detail`, sorted.
    fn after_ratchet(mut errs: Vec<FieldError>, obj: &Value, old: &Value) -> Vec<String> {
        ratchet(&mut errs, obj, Some(old));
        text(errs)
    }

    /// The update path (property by property, skipping what ratcheting drops, pruned) against
    /// the whole object at once with the schema as compiled; returns the errors both keep.
    /// Checks the create path (pruned against not) on the new object too.
    fn same_errors(schema: &Value, old: &Value, obj: &Value) -> Vec<String> {
        let rules = CelRules::compile(schema);
        let unpruned = compile_schema(schema);
        let root = RootContext::default();
        let whole = after_ratchet(
            validate_cel(&unpruned, obj, Some(old), root.clone()),
            obj,
            old,
        );
        let split = after_ratchet(validate_cel_update(&rules, obj, old, &root), obj, old);
        assert_eq!(whole, split, "old {old}\nnew {obj}");
        assert_eq!(
            text(validate_cel(&unpruned, obj, None, root.clone())),
            text(validate_cel(&rules.full, obj, None, root.clone())),
            "create {obj}"
        );
        whole
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "self.a != 'bad'", "message": "a is bad"},
                        {"rule": "!has(oldSelf.b) || self.b == oldSelf.b", "message": "b is immutable"},
                        {"rule": "self.a != 'far'", "fieldPath": ".c", "message": "reported at c"},
                    ],
                    "properties": {
                        "a": {"type": "string", "x-kubernetes-validations": [
                            {"rule": "self.matches('^[a-z]+$')", "message": "a is not lowercase"}]},
                        "b": {"type": "string"},
                        "c": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {
                            "type": "string",
                            "x-kubernetes-validations": [{"rule": "self != 'x'", "message": "no x"}]}},
                    },
                },
                "status": {
                    "type": "object",
                    "properties": {
                        "n": {"type": "integer", "x-kubernetes-validations": [
                            {"rule": "self >= 0", "message": "negative"}]},
                        "history": {"type": "array", "items": {"type": "object", "properties": {
                            "at": {"type": "string", "format": "date-time"},
                            "note": {"type": "string", "default": "none"}}}},
                        "since": {"type": "object",
                            "x-kubernetes-validations": [{
                                "rule": "!has(self.at) || self.at > timestamp('2020-01-01T00:00:00Z')",
                                "message": "too early"}],
                            "properties": {"at": {"type": "string", "format": "date-time"}}},
                    },
                },
            },
        })
    }

    fn obj(spec: Value, n: i64) -> Value {
        let since = if n < 5 {
            "2026-01-01T00:00:00Z"
        } else {
            "2019-01-01T00:00:00Z"
        };
        json!({
            "metadata": {"name": "o", "labels": {"l": "v"}},
            "spec": spec,
            "status": {"n": n, "history": [{"at": "2026-01-01T00:00:00Z"}], "since": {"at": since}},
        })
    }

    #[test]
    fn split_update_validation_keeps_what_whole_validation_keeps() {
        let schema = schema();
        assert!(CelRules::compile(&schema).parts.is_some());
        let same = |old: &Value, new: &Value| same_errors(&schema, old, new);
        // A status change leaves an invalid spec alone (ratcheted).
        let bad = json!({"a": "bad", "b": "1"});
        assert!(same(&obj(bad.clone(), 1), &obj(bad.clone(), 2)).is_empty());
        // Changing the spec re-checks it.
        assert_eq!(
            same(&obj(json!({"a": "ok"}), 1), &obj(bad.clone(), 1)).len(),
            1
        );
        // An error reported at a missing field is kept although the spec is unchanged.
        let far = json!({"a": "far"});
        assert_eq!(same(&obj(far.clone(), 1), &obj(far.clone(), 2)).len(), 1);
        // So is one at a map key that the path syntax cannot name.
        let dotted = json!({"a": "ok", "labels": {"k.x": "x"}});
        assert_eq!(
            same(&obj(dotted.clone(), 1), &obj(dotted.clone(), 2)).len(),
            1
        );
        // Transition rules run on unchanged and changed values alike.
        let (b1, b2) = (json!({"a": "ok", "b": "1"}), json!({"a": "ok", "b": "2"}));
        assert_eq!(same(&obj(b1, 1), &obj(b2, 1)).len(), 1);
        // A status change is checked; an unchanged invalid status is ratcheted.
        let ok = json!({"a": "ok"});
        assert_eq!(same(&obj(ok.clone(), 1), &obj(ok.clone(), -1)).len(), 1);
        assert!(same(&obj(ok.clone(), -1), &obj(ok.clone(), -1)).is_empty());
        // A date-time rule next to subtrees without rules (those are pruned).
        assert_eq!(same(&obj(ok.clone(), 1), &obj(ok.clone(), 7)).len(), 1);
        // Properties appearing and disappearing.
        let bare = json!({"metadata": {"name": "o"}});
        same(&bare, &obj(bad.clone(), -1));
        same(&obj(bad.clone(), -1), &bare);
    }

    #[test]
    fn pruning_keeps_what_rules_see() {
        let mut c = compile_pruned(&schema());
        let status = c.properties.remove("status").expect("status has rules");
        // history has no rule and nothing above it has one: gone; since keeps its subtree.
        assert!(!status.properties.contains_key("history"));
        assert!(status.properties["since"].properties.contains_key("at"));
        assert!(!c.properties.contains_key("metadata"));
    }

    #[test]
    fn root_rules_are_not_split() {
        let schema = json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "has(self.spec)", "message": "spec"}],
            "properties": {"spec": {"type": "object"}},
        });
        assert!(CelRules::compile(&schema).parts.is_none());
    }
}
