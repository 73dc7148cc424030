//! HTTP front: routing, CRUD, list/watch, status subresource, finalizers, patches, apply.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::SinkExt;
use serde_json::{Map, Value, json};

use super::admission::{self, AdmissionAttrs};
use super::auth::{Auth, Signer, UserInfo};
use super::error::{ApiError, ApiResult, FieldError};
use super::managed::{self, ApplyRequest, Scope};
use super::patch;
use super::registry::{Builtin, Registry, ResourceDef, StoreKey};
use super::schema;
use super::store::{self, EventType, Store, StoreEvent, Stored};
use super::{discovery, table};

pub(crate) struct Inner {
    pub store: Store,
    pub registry: Registry,
}

pub(crate) struct Sim {
    pub inner: Mutex<Inner>,
    pub auth: Auth,
    pub signer: Signer,
    pub issuer: String,
    pub base_url: String,
    pub bookmark_interval: Duration,
    pub request_log: Mutex<Vec<String>>,
    /// Turns true when the server shuts down: open watches end so connections can close.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

impl Sim {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn now_rfc3339() -> String {
    super::clock::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// A JSON answer already serialised.
pub(crate) fn json_bytes_response(code: StatusCode, b: Bytes) -> Response {
    (code, [("content-type", "application/json")], b).into_response()
}

/// Answers with a stored object as `def` shows it: its stored JSON as is when that is what
/// `def` shows, else the presented object serialised.
fn stored_response(code: StatusCode, def: &ResourceDef, obj: &Stored) -> Response {
    match obj.presented_json(def) {
        Some(b) => json_bytes_response(code, b.clone()),
        None => json_response(code, &present(def, &obj.value())),
    }
}

/// Per-request facts.
pub(crate) struct Ctx {
    pub user: UserInfo,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn q_bool(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }
    fn dry_run(&self) -> bool {
        self.q("dryRun") == Some("All")
    }
    fn manager(&self, default_from_agent: bool) -> String {
        if let Some(m) = self.q("fieldManager") {
            return m.to_string();
        }
        if default_from_agent {
            let ua = self.user_agent.split('/').next().unwrap_or_default();
            if !ua.is_empty() {
                return ua.to_string();
            }
        }
        "unknown".into()
    }
}

/// Entry point for every request.
pub(crate) async fn handle(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match handle_inner(&sim, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let line = format!("{method} {path} {}", resp.status().as_u16());
    tracing::debug!("{line}");
    if let Ok(mut log) = sim.request_log.lock() {
        if log.len() > 10_000 {
            log.clear();
        }
        log.push(line);
    }
    resp
}

async fn handle_inner(sim: &Arc<Sim>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers.clone();
    let real = sim.auth.authenticate_only(&headers, &sim.signer)?;
    let user = {
        let inner = sim.lock();
        super::rbac::impersonate(&inner, real, &headers)?
    };
    let query: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let hdr = |h: &HeaderMap, k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let ctx = Ctx {
        user,
        query,
        accept: hdr(&headers, "accept"),
        content_type: hdr(&headers, "content-type"),
        user_agent: hdr(&headers, "user-agent"),
    };
    // kube-apiserver's request body limit (3 MiB)
    const MAX_BODY: usize = 3 * 1024 * 1024;
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {MAX_BODY}"),
        )
    })?;
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = parts.method;

    if let Some(r) = discovery::route(sim, &method, &segs, &ctx)? {
        return Ok(r);
    }
    match segs.as_slice() {
        ["_sim", "compact"] if method == Method::POST => {
            sim.lock().store.compact();
            return Ok(json_response(StatusCode::OK, &json!({"compacted": true})));
        }
        ["_sim", "requests"] => {
            let log = sim
                .request_log
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            return Ok(json_response(StatusCode::OK, &json!(log)));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    let mut rest: Vec<&str> = rest.to_vec();
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest.remove(0);
    }
    let registry = sim.lock().registry.clone();
    let (ns, rest) = if rest.len() >= 3 && rest[0] == "namespaces" {
        match registry.lookup(group, version, rest[2]) {
            Some(d) if d.namespaced => (Some(rest[1].to_string()), rest[2..].to_vec()),
            _ => (None, rest),
        }
    } else {
        (None, rest)
    };
    let Some(plural) = rest.first() else {
        return Err(ApiError::not_found_path());
    };
    let Some(def) = registry.lookup(group, version, plural) else {
        return Err(ApiError::not_found_path());
    };
    if rest.len() > 3 {
        return Err(ApiError::not_found_path());
    }
    let name = rest.get(1).map(|s| s.to_string());
    let sub = rest.get(2).map(|s| s.to_string());
    let rr = ResReq { def, ns, name, sub };
    if let Some(s) = rr.sub.as_deref() {
        let ok = (s == "status" && rr.def.status_sub)
            || (s == "token" && rr.def.builtin == Builtin::ServiceAccount)
            || (s == "finalize" && rr.def.builtin == Builtin::Namespace);
        if !ok {
            return Err(ApiError::not_found_path());
        }
    }
    if rr.def.namespaced && rr.name.is_some() && rr.ns.is_none() {
        return Err(ApiError::not_found_path());
    }
    let is_watch = watch_path || ctx.q_bool("watch");
    // Authorization of every resource request (discovery was answered above, for everyone).
    let verb = match (&method, rr.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if is_watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let attrs = super::rbac::Attributes {
        verb: verb.into(),
        group: rr.def.group.clone(),
        resource: rr.def.plural.clone(),
        subresource: rr.sub.clone().unwrap_or_default(),
        name: rr.name.clone().unwrap_or_default(),
        // A namespace's own requests count as in that namespace (as kube-apiserver does).
        namespace: match (&rr.ns, rr.def.builtin, &rr.name) {
            (Some(ns), _, _) => ns.clone(),
            (None, Builtin::Namespace, Some(n)) => n.clone(),
            _ => String::new(),
        },
    };
    {
        let inner = sim.lock();
        super::rbac::authorize(&inner, &ctx.user, &attrs)?;
    }
    if rr.def.builtin == Builtin::AccessReview {
        if method != Method::POST || rr.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        let review = parse_body(&body, &ctx.content_type)?;
        let inner = sim.lock();
        return super::rbac::review(&inner, &ctx.user, &rr.def.plural, rr.ns_str(), &review);
    }
    if rr.def.builtin == Builtin::SelfSubjectReview {
        if method != Method::POST || rr.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        let u = &ctx.user;
        return Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "status": {"userInfo": {"username": u.username, "uid": u.uid, "groups": u.groups}}}),
        ));
    }
    match (method, rr.name.is_some(), rr.sub.as_deref()) {
        (Method::GET, false, _) if is_watch => watch(sim, &ctx, &rr),
        (Method::GET, false, _) => list(sim, &ctx, &rr),
        (Method::GET, true, None | Some("status")) => get(sim, &ctx, &rr),
        (Method::POST, false, _) => create(sim, &ctx, &rr, &body).await,
        (Method::POST, true, Some("token")) => super::auth::token_request(sim, &ctx, &rr, &body),
        (Method::PUT, true, None | Some("status") | Some("finalize")) => {
            update(sim, &ctx, &rr, &body).await
        }
        (Method::PATCH, true, None | Some("status")) => patch_op(sim, &ctx, &rr, &body).await,
        (Method::DELETE, true, None) => delete(sim, &ctx, &rr, &body).await,
        (Method::DELETE, false, _) => delete_collection(sim, &ctx, &rr, &body).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

pub(crate) struct ResReq {
    pub def: Arc<ResourceDef>,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl ResReq {
    pub fn ns_str(&self) -> &str {
        self.ns.as_deref().unwrap_or_default()
    }
    pub fn name_str(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    fn scope(&self) -> Scope {
        if self.sub.as_deref() == Some("status") {
            Scope::Status
        } else {
            Scope::Main {
                with_status: !self.def.status_sub,
            }
        }
    }
}

// ---------------------------------------------------------------- representation

/// The stored object as the requested version shows it.
pub(crate) fn present(def: &ResourceDef, obj: &Value) -> Value {
    let mut o = if def.builtin == Builtin::EventV1 {
        event_core_to_v1(obj)
    } else {
        obj.clone()
    };
    o["apiVersion"] = json!(def.api_version());
    o["kind"] = json!(def.kind);
    o
}

/// A client's object as stored.
fn ingest(def: &ResourceDef, obj: Value) -> Value {
    if def.builtin == Builtin::EventV1 {
        let mut o = event_v1_to_core(&obj);
        o["apiVersion"] = json!("v1");
        o["kind"] = json!("Event");
        o
    } else {
        obj
    }
}

const EVENT_FIELDS: [(&str, &str); 13] = [
    ("regarding", "involvedObject"),
    ("related", "related"),
    ("note", "message"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("eventTime", "eventTime"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn event_core_to_v1(core: &Value) -> Value {
    let mut out = Map::new();
    out.insert("metadata".into(), core["metadata"].clone());
    for (v1, c) in EVENT_FIELDS {
        if let Some(x) = core.get(c)
            && !x.is_null()
        {
            out.insert(v1.into(), x.clone());
        }
    }
    if let Some(s) = core.get("series")
        && s.is_object()
    {
        out.insert("series".into(), s.clone());
    }
    Value::Object(out)
}

fn event_v1_to_core(v1: &Value) -> Value {
    let mut out = Map::new();
    out.insert("metadata".into(), v1["metadata"].clone());
    for (v, c) in EVENT_FIELDS {
        if let Some(x) = v1.get(v)
            && !x.is_null()
        {
            out.insert(c.into(), x.clone());
        }
    }
    if let Some(s) = v1.get("series")
        && s.is_object()
    {
        out.insert("series".into(), s.clone());
    }
    Value::Object(out)
}

fn parse_body(body: &[u8], content_type: &str) -> ApiResult<Value> {
    if content_type.contains("application/vnd.kubernetes.protobuf")
        && let Some(v) = super::protobuf::decode(body)
    {
        ensure_shape(&v)?;
        return Ok(v);
    }
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type})"
            ),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let v: Value = if content_type.contains("yaml") {
        // JSON is YAML, and what clients send as apply patches: read it as JSON when it is
        // (much cheaper), as YAML otherwise.
        match json_as_yaml(body) {
            Some(v) => v,
            None => serde_norway::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        }
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?
    };
    ensure_shape(&v)?;
    Ok(v)
}

/// `body` read as JSON, when a YAML parser would surely read it to the same value: valid JSON
/// with no tab (YAML restricts where tabs may go) and no key twice in an object (parsers
/// differ on those). None leaves the body to the YAML parser.
fn json_as_yaml(body: &[u8]) -> Option<Value> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Strict;
    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Strict {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(Strict)? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(k) = map.next_key::<String>()? {
                let v = map.next_value_seed(Strict)?;
                if out.insert(k, v).is_some() {
                    return Err(A::Error::custom("duplicate key"));
                }
            }
            Ok(Value::Object(out))
        }
    }
    if body.contains(&b'\t') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = Strict.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

fn check_type(def: &ResourceDef, obj: &Value) -> ApiResult<()> {
    if let Some(k) = obj["kind"].as_str()
        && k != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            def.kind
        )));
    }
    if let Some(av) = obj["apiVersion"].as_str()
        && av != def.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    Ok(())
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match &mut obj["metadata"] {
        Value::Object(m) => m,
        // safe: metadata was made an object just above
        _ => unreachable!("metadata is an object"),
    }
}

/// Objects must be JSON objects whose metadata (if any) is an object; anything else would
/// not decode in kube-apiserver either.
fn ensure_shape(v: &Value) -> ApiResult<()> {
    if !v.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    let md = &v["metadata"];
    if !(md.is_null() || md.is_object()) {
        return Err(ApiError::bad_request(
            "unable to decode: metadata must be an object",
        ));
    }
    for k in ["labels", "annotations"] {
        let m = &md[k];
        if !(m.is_null()
            || m.as_object()
                .is_some_and(|o| o.values().all(Value::is_string)))
        {
            return Err(ApiError::bad_request(format!(
                "unable to decode: metadata.{k} must be a map of strings"
            )));
        }
    }
    if !(md["finalizers"].is_null()
        || md["finalizers"]
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)))
    {
        return Err(ApiError::bad_request(
            "unable to decode: metadata.finalizers must be a list of strings",
        ));
    }
    Ok(())
}

fn str_at<'a>(obj: &'a Value, a: &str, b: &str) -> &'a str {
    obj[a][b].as_str().unwrap_or_default()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

fn is_table(ctx: &Ctx) -> bool {
    ctx.accept.contains("as=Table")
}

// ---------------------------------------------------------------- read

fn get(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq) -> ApiResult<Response> {
    let (stored, rv) = {
        let inner = sim.lock();
        let stored = inner
            .store
            .get_stored(&rr.def.store, rr.ns_str(), rr.name_str())
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rr.def, rr.name_str()))?;
        (stored, inner.store.current_rv())
    };
    let plain = !wants_metadata_only(ctx) && !is_table(ctx);
    if plain {
        return Ok(stored_response(StatusCode::OK, &rr.def, &stored));
    }
    let obj = present(&rr.def, &stored.value());
    if wants_metadata_only(ctx) {
        return Ok(json_response(StatusCode::OK, &partial_metadata(&obj)));
    }
    if is_table(ctx) {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&rr.def, &[obj], rv, None, ctx.q("includeObject")),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

struct Selectors {
    labels: Vec<store::LabelReq>,
    fields: Vec<store::FieldReq>,
}

impl Selectors {
    fn parse(def: &ResourceDef, ctx: &Ctx) -> ApiResult<Self> {
        let labels = match ctx.q("labelSelector") {
            Some(s) => store::parse_label_selector(s).map_err(ApiError::bad_request)?,
            None => vec![],
        };
        let fields = match ctx.q("fieldSelector") {
            Some(s) => store::parse_field_selector(s).map_err(ApiError::bad_request)?,
            None => vec![],
        };
        for f in &fields {
            if !field_supported(def, &f.path) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    f.path
                )));
            }
        }
        Ok(Self { labels, fields })
    }
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
    fn matches(&self, presented: &Value) -> bool {
        store::labels_match(&self.labels, presented) && store::fields_match(&self.fields, presented)
    }
}

fn field_supported(def: &ResourceDef, path: &str) -> bool {
    if path == "metadata.name" || path == "metadata.namespace" {
        return true;
    }
    match def.builtin {
        Builtin::Event => {
            path.starts_with("involvedObject.")
                || matches!(path, "reason" | "reportingComponent" | "source" | "type")
        }
        Builtin::EventV1 => {
            path.starts_with("regarding.")
                || matches!(path, "reason" | "reportingController" | "type")
        }
        Builtin::Secret => path == "type",
        Builtin::Namespace => path == "status.phase",
        Builtin::Custom => def
            .selectable_fields
            .iter()
            .any(|f| f.trim_start_matches('.') == path),
        _ => false,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

/// kube-apiserver's answer to a resourceVersion it has not reached (after waiting for it).
fn too_large_rv(rv: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {rv}, current: {current}"),
    );
    e.details = Some(json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    }));
    e
}

fn wants_metadata_only(ctx: &Ctx) -> bool {
    ctx.accept.contains("as=PartialObjectMetadata")
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

fn list(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq) -> ApiResult<Response> {
    let sel = Selectors::parse(&rr.def, ctx)?;
    let limit: usize = ctx
        .q("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| *l > 0)
        .map(|l| l as usize)
        .unwrap_or(usize::MAX);
    let inner = sim.lock();
    let mut list_rv = inner.store.current_rv();
    let mut start_after: Option<(String, String)> = None;
    if let Some(c) = ctx.q("continue").filter(|c| !c.is_empty()) {
        let tok: ContinueToken = base64::engine::general_purpose::STANDARD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
        if tok.rv < inner.store.compacted_rv() {
            return Err(ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        list_rv = tok.rv;
        start_after = Some((tok.ns, tok.name));
    } else if let Some(rv) = ctx.q("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && rv > list_rv
    {
        return Err(too_large_rv(rv, list_rv));
    } else if ctx.q("resourceVersionMatch") == Some("Exact")
        && let Some(rv) = ctx.q("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && rv != list_rv
    {
        return Err(ApiError::gone(format!(
            "too old resource version: {rv} ({})",
            inner.store.compacted_rv()
        )));
    }
    let ns = if rr.def.namespaced {
        rr.ns.as_deref()
    } else {
        None
    };
    // Selectors see the object as the requested version shows it; only events.k8s.io
    // differs from the stored form.
    let needs_present = rr.def.builtin == Builtin::EventV1;
    let mut stored: Vec<Arc<Stored>> = vec![];
    let mut last: Option<(String, String)> = None;
    let mut remaining = 0usize;
    for (key, obj) in inner
        .store
        .iter_from(&rr.def.store, ns, start_after.as_ref())
    {
        // Without selectors every object matches: no need to parse it here.
        let matches = sel.is_empty() || {
            let v = obj.value();
            if needs_present {
                sel.matches(&present(&rr.def, &v))
            } else {
                sel.matches(&v)
            }
        };
        if !matches {
            continue;
        }
        if stored.len() >= limit {
            remaining += 1;
            if !sel.is_empty() {
                break;
            }
            continue;
        }
        stored.push(obj.clone());
        last = Some(key.clone());
    }
    drop(inner);
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0
        && let Some((ns, name)) = last
    {
        let tok = serde_json::to_vec(&ContinueToken {
            rv: list_rv,
            ns,
            name,
        })
        .unwrap_or_default();
        metadata["continue"] = json!(base64::engine::general_purpose::STANDARD.encode(tok));
        if sel.is_empty() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    if !is_table(ctx) && !wants_metadata_only(ctx) {
        return Ok(list_response(&rr.def, &metadata, &stored));
    }
    let items: Vec<Value> = stored
        .iter()
        .map(|o| present(&rr.def, &o.value()))
        .collect();
    if is_table(ctx) {
        return Ok(json_response(
            StatusCode::OK,
            &table::table(
                &rr.def,
                &items,
                list_rv,
                metadata.get("continue").cloned(),
                ctx.q("includeObject"),
            ),
        ));
    }
    if wants_metadata_only(ctx) {
        let items: Vec<Value> = items.iter().map(partial_metadata).collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata, "items": items}),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": rr.def.list_kind(),
            "apiVersion": rr.def.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

/// `{"apiVersion","items","kind","metadata"}` (the key order of a serialised
/// `serde_json::Value`) with each item's stored JSON copied in when it needs no conversion.
fn list_response(def: &ResourceDef, metadata: &Value, items: &[Arc<Stored>]) -> Response {
    let size: usize = items.iter().map(|o| o.json_len() + 1).sum();
    let mut out: Vec<u8> = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"apiVersion\":");
    out.extend_from_slice(Value::String(def.api_version()).to_string().as_bytes());
    out.extend_from_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match o.presented_json(def) {
            Some(b) => out.extend_from_slice(b),
            None => out.extend_from_slice(present(def, &o.value()).to_string().as_bytes()),
        }
    }
    out.extend_from_slice(b"],\"kind\":");
    out.extend_from_slice(Value::String(def.list_kind()).to_string().as_bytes());
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(metadata.to_string().as_bytes());
    out.push(b'}');
    json_bytes_response(StatusCode::OK, Bytes::from(out))
}

// ---------------------------------------------------------------- watch

fn watch_line(etype: &str, obj: &Value) -> Bytes {
    let mut s = json!({"type": etype, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// [`watch_line`] for an object already serialised: the same bytes, without a `Value`.
fn watch_line_json(etype: &str, obj: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(obj.len() + 40);
    out.extend_from_slice(b"{\"object\":");
    out.extend_from_slice(obj);
    out.extend_from_slice(b",\"type\":");
    out.extend_from_slice(Value::String(etype.to_string()).to_string().as_bytes());
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn watch(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq) -> ApiResult<Response> {
    let sel = Selectors::parse(&rr.def, ctx)?;
    let bookmarks = ctx.q_bool("allowWatchBookmarks");
    let send_initial = ctx.q("sendInitialEvents");
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv_param = ctx.q("resourceVersion").unwrap_or_default().to_string();
    if send_initial.is_some() {
        let mut errs = vec![];
        if send_initial == Some("true") && !bookmarks {
            errs.push(FieldError::forbidden(
                "allowWatchBookmarks",
                "allowWatchBookmarks required when sendInitialEvents is specified",
            ));
        }
        if ctx.q("resourceVersionMatch") != Some("NotOlderThan") {
            errs.push(FieldError::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !errs.is_empty() {
            let mut e = ApiError::invalid(&rr.def, "", &errs);
            e.message = format!(
                "ListOptions.meta.k8s.io \"\" is invalid: {}",
                errs.iter()
                    .map(FieldError::text)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Err(e);
        }
    }
    let initial_events = send_initial == Some("true")
        || (send_initial.is_none() && (rv_param.is_empty() || rv_param == "0"));
    let ns = if rr.def.namespaced {
        rr.ns.clone()
    } else {
        None
    };
    let (initial, past, rx, start_rv, gone) = {
        let inner = sim.lock();
        let current = inner.store.current_rv();
        let start_rv = if initial_events || rv_param.is_empty() {
            current
        } else {
            match rv_param.parse::<u64>() {
                Ok(r) if r > current => return Err(too_large_rv(r, current)),
                Ok(r) => r,
                Err(_) => {
                    return Err(ApiError::bad_request(format!(
                        "invalid resource version \"{rv_param}\""
                    )));
                }
            }
        };
        let initial: Vec<Arc<Stored>> = if initial_events {
            inner
                .store
                .list(&rr.def.store, ns.as_deref())
                .into_iter()
                .map(|(_, o)| o)
                .filter(|o| sel.is_empty() || sel.matches(&present(&rr.def, &o.value())))
                .collect()
        } else {
            vec![]
        };
        match inner.store.subscribe_from(start_rv) {
            Some((past, rx)) => (initial, past, Some(rx), start_rv, None),
            None => (
                initial,
                vec![],
                None,
                start_rv,
                Some(inner.store.compacted_rv()),
            ),
        }
    };
    let render_mode = if is_table(ctx) {
        Render::Table(ctx.q("includeObject").map(str::to_string))
    } else if wants_metadata_only(ctx) {
        Render::Metadata
    } else {
        Render::Full
    };
    let (mut tx, body_rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let def = rr.def.clone();
    let bookmark_interval = sim.bookmark_interval;
    let initial_end_bookmark = send_initial == Some("true");
    let closing = sim.closing.clone();
    tokio::spawn(async move {
        let closed = wait_closed(closing);
        tokio::pin!(closed);
        if let Some(compacted) = gone {
            let e = ApiError::gone(format!(
                "too old resource version: {start_rv} ({compacted})"
            ));
            let _ = tx.send(Ok(watch_line("ERROR", &e.to_status()))).await;
            return;
        }
        let Some(mut rx) = rx else { return };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first = true;
        let mut render = |obj: &Value| render_mode.render(&def, obj, &mut first);
        let full = matches!(render_mode, Render::Full);
        for obj in initial {
            let line = match obj.presented_json(&def).filter(|_| full) {
                Some(b) => watch_line_json("ADDED", b),
                None => watch_line("ADDED", &render(&present(&def, &obj.value()))),
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64, initial_end: bool| {
            let mut md = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": md})
        };
        if initial_end_bookmark
            && tx
                .send(Ok(watch_line("BOOKMARK", &bookmark(start_rv, true))))
                .await
                .is_err()
        {
            return;
        }
        let mut last_rv = start_rv;
        // An event whose object the watch shows as stored, to a watch without selectors: its
        // line is made from the stored JSON without parsing it.
        let fast = |ev: &StoreEvent| -> Option<Option<Bytes>> {
            if ev.key != def.store {
                return Some(None);
            }
            if let Some(ns) = &ns
                && &ev.namespace != ns
            {
                return Some(None);
            }
            if !full || !sel.is_empty() {
                return None;
            }
            ev.object
                .presented_json(&def)
                .map(|b| Some(watch_line_json(ev.etype.as_str(), b)))
        };
        let deliver = |ev: &StoreEvent| -> Option<(String, Value)> {
            if ev.key != def.store {
                return None;
            }
            if let Some(ns) = &ns
                && &ev.namespace != ns
            {
                return None;
            }
            let now_obj = present(&def, &ev.object.value());
            let m_new = sel.matches(&now_obj);
            let m_old = if sel.is_empty() {
                ev.old.as_ref().map(|_| true)
            } else {
                ev.old
                    .as_ref()
                    .map(|o| sel.matches(&present(&def, &o.value())))
            };
            let t = match (ev.etype, m_old, m_new) {
                (EventType::Added, _, true) => EventType::Added,
                (EventType::Modified, Some(true) | None, true) => EventType::Modified,
                (EventType::Modified, Some(false), true) => EventType::Added,
                (EventType::Modified, Some(true), false) => EventType::Deleted,
                (EventType::Deleted, _, true) => EventType::Deleted,
                (EventType::Deleted, Some(true), false) => EventType::Deleted,
                _ => return None,
            };
            Some((t.as_str().to_string(), now_obj))
        };
        for ev in past {
            last_rv = last_rv.max(ev.rv);
            let line = match fast(&ev) {
                Some(line) => line,
                None => deliver(&ev).map(|(t, o)| watch_line(&t, &render(&o))),
            };
            if let Some(line) = line
                && tx.send(Ok(line)).await.is_err()
            {
                return;
            }
        }
        let mut tick = tokio::time::interval(bookmark_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = &mut closed => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(Ok(watch_line("BOOKMARK", &bookmark(last_rv, false)))).await.is_err() {
                        return;
                    }
                }
                ev = rx.recv() => {
                    match ev {
                        Ok(ev) => {
                            if ev.rv <= last_rv { continue; }
                            last_rv = ev.rv;
                            let line = match fast(&ev) {
                                Some(line) => line,
                                None => deliver(&ev).map(|(t, o)| watch_line(&t, &render(&o))),
                            };
                            if let Some(line) = line
                                && tx.send(Ok(line)).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                _ = tx_closed(&mut tx) => return,
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(body_rx))
        .unwrap_or_else(|_| ApiError::internal("watch response").into_response()))
}

/// How watch events carry their objects (per the request's Accept header).
enum Render {
    Full,
    Metadata,
    /// Tables; only the first event carries column definitions, as in kube-apiserver.
    Table(Option<String>),
}

impl Render {
    fn render(&self, def: &ResourceDef, obj: &Value, first: &mut bool) -> Value {
        match self {
            Render::Full => obj.clone(),
            Render::Metadata => partial_metadata(obj),
            Render::Table(include) => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                let mut t =
                    table::table(def, std::slice::from_ref(obj), rv, None, include.as_deref());
                if !*first {
                    t["columnDefinitions"] = json!([]);
                }
                *first = false;
                t
            }
        }
    }
}

/// Resolves once the server starts shutting down.
async fn wait_closed(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        let is_closing = *rx.borrow_and_update();
        if is_closing || rx.changed().await.is_err() {
            return;
        }
    }
}

async fn tx_closed(tx: &mut futures::channel::mpsc::Sender<Result<Bytes, Infallible>>) {
    futures::future::poll_fn(|cx| match tx.poll_ready(cx) {
        std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(()),
        _ => std::task::Poll::Pending,
    })
    .await
}

// ---------------------------------------------------------------- write helpers

fn is_deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Kind-specific defaulting and normalisation done on every write.
fn normalise(def: &ResourceDef, obj: &mut Value, unknown: &mut Vec<String>) {
    match def.builtin {
        Builtin::Secret => {
            if let Some(sd) = obj.get("stringData").and_then(Value::as_object).cloned() {
                let data = obj
                    .as_object_mut()
                    .map(|o| o.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in sd {
                        let s = v.as_str().unwrap_or_default();
                        data.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(s)),
                        );
                    }
                }
                if let Some(o) = obj.as_object_mut() {
                    o.remove("stringData");
                }
            }
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
        }
        Builtin::Namespace => {
            let name = str_at(obj, "metadata", "name").to_string();
            let md = meta_mut(obj);
            let labels = md.entry("labels").or_insert_with(|| json!({}));
            if labels.is_object() {
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        Builtin::Custom => {
            if let Some(s) = &def.schema {
                schema::prune(s, obj, "", unknown);
                *obj = schema::default(s, obj);
            }
        }
        _ => {}
    }
}

/// RoleBindings and ClusterRoleBindings: a roleRef (immutable) and well-formed subjects.
fn validate_rbac(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    use super::error::FieldError;
    let mut errs = vec![];
    if !def.kind.ends_with("Binding") {
        return errs;
    }
    let rr = &obj["roleRef"];
    let kind = rr["kind"].as_str().unwrap_or_default();
    if rr["name"].as_str().is_none_or(str::is_empty) {
        errs.push(FieldError::required("roleRef.name"));
    }
    let kinds: &[&str] = if def.kind == "RoleBinding" {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&kind) {
        errs.push(FieldError::new(
            "FieldValueNotSupported",
            "roleRef.kind",
            format!("Unsupported value: {:?}: supported values: {kinds:?}", kind),
        ));
    }
    if let Some(old) = old
        && old["roleRef"] != *rr
    {
        errs.push(FieldError::invalid("roleRef", rr, "cannot change roleRef"));
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let k = s["kind"].as_str().unwrap_or_default();
        if !matches!(k, "User" | "Group" | "ServiceAccount") {
            errs.push(FieldError::new(
                "FieldValueNotSupported",
                &format!("subjects[{i}].kind"),
                format!("Unsupported value: {k:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""),
            ));
        }
        if s["name"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required(&format!("subjects[{i}].name")));
        }
    }
    errs
}

/// Validation of the object about to be stored.
fn validate_obj(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = vec![];
    let name = str_at(obj, "metadata", "name");
    if old.is_none() && def.builtin == Builtin::Rbac {
        // RBAC names are path segments (`system:masters`-style colons allowed).
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '%']) {
            errs.push(super::error::FieldError::invalid(
                "metadata.name",
                &json!(name),
                "may not be '.' or '..' and may not contain '/' or '%'",
            ));
        }
    } else if old.is_none()
        && let Some(e) = schema::validate_name(name, def.builtin == Builtin::Namespace)
    {
        errs.push(e);
    }
    if def.builtin == Builtin::Rbac {
        errs.extend(validate_rbac(def, obj, old));
    }
    errs.extend(schema::validate_object_meta(&obj["metadata"]));
    if let Some(old) = old
        && is_deleting(old)
    {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(obj)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if !added.is_empty() {
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                &format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
            ));
        }
    }
    match def.builtin {
        Builtin::Custom => {
            if let Some(s) = &def.schema {
                let root = kube::core::cel::RootContext {
                    api_version: def.api_version(),
                    api_group: def.group.clone(),
                    kind: def.kind.clone(),
                };
                errs.extend(schema::validate_custom(
                    s,
                    def.compiled.as_deref(),
                    obj,
                    old,
                    root,
                ));
            }
        }
        Builtin::Crd => errs.extend(validate_crd(obj)),
        Builtin::EventV1 => errs.extend(validate_event_v1(obj)),
        Builtin::Lease => {
            if let Some(d) = obj["spec"]["leaseDurationSeconds"].as_i64()
                && d <= 0
            {
                errs.push(FieldError::invalid(
                    "spec.leaseDurationSeconds",
                    &json!(d),
                    "must be greater than 0",
                ));
            }
        }
        Builtin::Secret => {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    errs.push(FieldError::invalid(
                        &format!("data[{k}]"),
                        v,
                        "illegal base64 data",
                    ));
                }
            }
        }
        _ => {}
    }
    errs
}

/// kube-apiserver's checks of events.k8s.io/v1 Events (ValidateEventCreate/Update for that
/// group version). `obj` is in the stored core/v1 form; errors use the v1 field names.
fn validate_event_v1(obj: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let s = |k: &str| obj[k].as_str().unwrap_or_default();
    if s("eventTime").is_empty() {
        errs.push(FieldError::required("eventTime"));
    }
    if !matches!(s("type"), "Normal" | "Warning") {
        errs.push(FieldError::invalid(
            "type",
            &json!(""),
            &format!("has invalid value: {}", s("type")),
        ));
    }
    for (v1, core, limit) in [
        ("reportingController", "reportingComponent", 0),
        ("reportingInstance", "reportingInstance", 128),
        ("action", "action", 128),
        ("reason", "reason", 128),
    ] {
        let v = s(core);
        if v.is_empty() {
            errs.push(FieldError::required(v1));
        } else if limit > 0 && v.len() > limit {
            errs.push(FieldError::invalid(
                v1,
                &json!(""),
                &format!("can have at most {limit} characters"),
            ));
        }
    }
    if s("message").len() > 1024 {
        errs.push(FieldError::new(
            "FieldValueTooLong",
            "note",
            "Too long: may not be more than 1024 bytes",
        ));
    }
    errs
}

fn validate_crd(obj: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let name = str_at(obj, "metadata", "name");
    if group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural"));
    }
    if spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        errs.push(FieldError::required("spec.names.kind"));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            &json!(versions),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let sch = &v["schema"]["openAPIV3Schema"];
        if !sch.is_object() {
            continue;
        }
        let compiled = kube::core::cel::compile_schema(sch);
        let mut bad = vec![];
        schema::cel_compile_errors(
            &compiled,
            &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            &mut bad,
        );
        for (field, err) in bad {
            errs.push(FieldError::new(
                "FieldValueInvalid",
                &field,
                format!("Invalid value: \"object\": compilation failed: {err}"),
            ));
        }
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => errs.push(FieldError::new(
            "FieldValueNotSupported",
            "spec.scope",
            format!(
                "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        )),
        None => errs.push(FieldError::required("spec.scope")),
    }
    errs
}

fn crd_status(obj: &mut Value) {
    // keep the transition times of conditions that already hold
    let since = |t: &str| {
        obj["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .map(str::to_string)
    };
    let now = now_rfc3339();
    let (t_names, t_est) = (
        since("NamesAccepted").unwrap_or_else(|| now.clone()),
        since("Established").unwrap_or_else(|| now.clone()),
    );
    let names = obj["spec"]["names"].clone();
    let stored: Vec<Value> = obj["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": t_names},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": t_est},
        ],
    });
}

fn rebuild_registry(inner: &mut Inner) {
    let crds: Vec<Value> = inner
        .store
        .list(
            &StoreKey::new("apiextensions.k8s.io", "customresourcedefinitions"),
            None,
        )
        .into_iter()
        .map(|(_, v)| v.value())
        .filter(|v| !is_deleting(v))
        .collect();
    inner.registry = Registry::build(&crds);
}

/// Whether two objects are equal but for the members named in `skip`, without copying them.
fn eq_except(a: &Map<String, Value>, b: &Map<String, Value>, skip: &[&str]) -> bool {
    let kept = |m: &Map<String, Value>| m.keys().filter(|k| !skip.contains(&k.as_str())).count();
    kept(a) == kept(b)
        && a.iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .all(|(k, v)| b.get(k) == Some(v))
}

/// Object comparison that ignores managedFields timestamps.
fn same_object(a: &Value, b: &Value) -> bool {
    // Objects with metadata objects (every stored object): compared in place.
    if let (Some(ao), Some(bo)) = (a.as_object(), b.as_object())
        && let (Some(am), Some(bm)) = (
            ao.get("metadata").and_then(Value::as_object),
            bo.get("metadata").and_then(Value::as_object),
        )
    {
        let entries_eq = match (am.get("managedFields"), bm.get("managedFields")) {
            (Some(Value::Array(x)), Some(Value::Array(y))) => {
                x.len() == y.len()
                    && x.iter().zip(y).all(|(e, f)| match (e, f) {
                        (Value::Object(e), Value::Object(f)) => eq_except(e, f, &["time"]),
                        (e, f) => e == f,
                    })
            }
            (x, y) => x == y,
        };
        return entries_eq
            && eq_except(am, bm, &["managedFields"])
            && eq_except(ao, bo, &["metadata"]);
    }
    same_object_copied(a, b)
}

fn same_object_copied(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(mf) = v["metadata"]
            .get_mut("managedFields")
            .and_then(Value::as_array_mut)
        {
            for e in mf {
                if let Some(o) = e.as_object_mut() {
                    o.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// Strips what a write to the main resource may not change (status, with a status
/// subresource) or, for /status, everything but status.
fn separate(def: &ResourceDef, scope: Scope, current: &Value, mut new: Value) -> Value {
    match scope {
        Scope::Status => {
            let mut out = current.clone();
            match new.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(o) = out.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            // keep the request's metadata.resourceVersion for the precondition check
            let rv = new["metadata"]["resourceVersion"].clone();
            out["metadata"]["resourceVersion"] = rv;
            out
        }
        Scope::Main { .. } => {
            if def.status_sub {
                match current.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            new
        }
    }
}

/// The server's part of an update (PrepareForUpdate): status/main separation, immutable
/// metadata, generation.
fn prepare_update(def: &ResourceDef, scope: Scope, current: &Value, new: Value) -> Value {
    if scope == Scope::Status {
        // /status keeps everything but status from the stored object, metadata included
        // (the general path below computes the same with two more copies of the object)
        let mut keep = current.clone();
        match new.get("status") {
            Some(st) if !st.is_null() => keep["status"] = st.clone(),
            _ => {
                if let Some(o) = keep.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        keep["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
        return keep;
    }
    let mut new = separate(def, scope, current, new);
    carry_metadata(def, current, &mut new);
    new
}

/// Immutable metadata, generation, managed fields: the server-owned parts of an update.
fn carry_metadata(def: &ResourceDef, current: &Value, new: &mut Value) {
    let cm = current["metadata"].clone();
    let md = meta_mut(new);
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "managedFields",
    ] {
        match cm.get(k) {
            Some(v) if !v.is_null() => {
                md.insert(k.into(), v.clone());
            }
            _ => {
                md.remove(k);
            }
        }
    }
    if md.get("generateName").is_some_and(Value::is_null) {
        md.remove("generateName");
    }
    if def.has_generation() {
        let ignored: &[&str] = if def.status_sub {
            &["metadata", "apiVersion", "kind", "status"]
        } else {
            &["metadata", "apiVersion", "kind"]
        };
        let changed = match (current.as_object(), new.as_object()) {
            (Some(c), Some(n)) => !eq_except(c, n, ignored),
            _ => {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(o) = v.as_object_mut() {
                        for k in ignored {
                            o.remove(*k);
                        }
                    }
                    v
                };
                strip(current) != strip(new)
            }
        };
        if changed {
            let g = cm["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(g);
        }
    }
}

fn warning_headers(resp: &mut Response, unknown: &[String]) {
    for u in unknown {
        let w = format!(
            "299 - \"unknown field \\\"{}\\\"\"",
            u.trim_start_matches('.')
        );
        if let Ok(h) = axum::http::HeaderValue::from_str(&w) {
            resp.headers_mut().append("warning", h);
        }
    }
}

fn strict_check(ctx: &Ctx, unknown: &[String]) -> ApiResult<()> {
    if ctx.q("fieldValidation") == Some("Strict") && !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{}\"", u.trim_start_matches('.')))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    Ok(())
}

fn deletion_response(def: &ResourceDef, obj: &Value) -> Response {
    if def.is_custom() || def.builtin == Builtin::Crd {
        json_response(StatusCode::OK, &present(def, obj))
    } else {
        json_response(
            StatusCode::OK,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": str_at(obj, "metadata", "name"), "group": def.group,
                            "kind": def.plural, "uid": str_at(obj, "metadata", "uid")}
            }),
        )
    }
}

// ---------------------------------------------------------------- create

async fn create(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq, body: &[u8]) -> ApiResult<Response> {
    let obj = parse_body(body, &ctx.content_type)?;
    check_type(&rr.def, &obj)?;
    let manager = ctx.manager(true);
    let (written, unknown) =
        create_object(sim, ctx, &rr.def, rr.ns.as_deref(), obj, &manager, None).await?;
    let mut resp = written.response(&rr.def, StatusCode::CREATED);
    warning_headers(&mut resp, &unknown);
    Ok(resp)
}

/// An object a write produced, and its stored version when it was stored (not on dry runs).
struct Written {
    obj: Value,
    stored: Option<Arc<Stored>>,
}

impl Written {
    /// The answer showing the object: the stored JSON when it can be shown as is.
    fn response(&self, def: &ResourceDef, code: StatusCode) -> Response {
        match &self.stored {
            Some(st) if st.presented_json(def).is_some() => stored_response(code, def, st),
            _ => json_response(code, &present(def, &self.obj)),
        }
    }
}

/// Creates an object (also used by apply-create). `managed` pre-set managedFields (apply).
async fn create_object(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    def: &Arc<ResourceDef>,
    url_ns: Option<&str>,
    obj: Value,
    manager: &str,
    apply_result: Option<Value>,
) -> ApiResult<(Written, Vec<String>)> {
    let mut obj = ingest(def, obj);
    let body_ns = str_at(&obj, "metadata", "namespace").to_string();
    if def.namespaced {
        let ns = url_ns.unwrap_or_default();
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_mut(&mut obj).insert("namespace".into(), json!(ns));
    } else {
        meta_mut(&mut obj).remove("namespace");
    }
    let mut name = str_at(&obj, "metadata", "name").to_string();
    if name.is_empty() {
        let gen_name = str_at(&obj, "metadata", "generateName").to_string();
        if gen_name.is_empty() {
            return Err(ApiError::invalid(
                def,
                "",
                &[FieldError::new(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
        name = format!("{gen_name}{}", random_suffix());
        meta_mut(&mut obj).insert("name".into(), json!(name));
    }
    let now = now_rfc3339();
    {
        // system fields are the server's; clients cannot set them
        let md = meta_mut(&mut obj);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "managedFields",
            "selfLink",
            "generation",
        ] {
            md.remove(k);
        }
    }
    // NamespaceLifecycle runs before the webhooks
    check_namespace(&sim.lock(), def, url_ns, &name)?;
    let mut unknown = vec![];
    normalise(def, &mut obj, &mut unknown);
    strict_check(ctx, &unknown)?;
    let attrs = AdmissionAttrs::new(def, url_ns, &name, "CREATE", None, &ctx.user, ctx.dry_run());
    admission::mutate(sim, &attrs, &mut obj, None).await?;
    ensure_shape(&obj).map_err(|e| {
        ApiError::internal(format!(
            "Internal error occurred: a mutating webhook broke the object: {}",
            e.message
        ))
    })?;
    let mut unknown2 = vec![];
    normalise(def, &mut obj, &mut unknown2);
    // PrepareForCreate and the system fields, after mutating admission as in kube-apiserver
    {
        let md = meta_mut(&mut obj);
        md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        md.insert("creationTimestamp".into(), json!(now));
        md.remove("deletionTimestamp");
        md.remove("deletionGracePeriodSeconds");
        md.remove("resourceVersion");
        md.remove("managedFields");
        md.remove("generation");
    }
    if def.has_generation() {
        obj["metadata"]["generation"] = json!(1);
    }
    if def.status_sub
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    match def.builtin {
        Builtin::Namespace => obj["status"] = json!({"phase": "Active"}),
        Builtin::Crd => crd_status(&mut obj),
        _ => {}
    }
    match &apply_result {
        Some(applied) => {
            if let Some(mf) = applied["metadata"].get("managedFields") {
                obj["metadata"]["managedFields"] = mf.clone();
            }
        }
        None => managed::record_update(
            None,
            &mut obj,
            manager,
            &def.api_version(),
            Scope::Main {
                with_status: !def.status_sub,
            },
            def.schema.as_ref(),
            &now,
        ),
    }
    let errs = validate_obj(def, &obj, None);
    if !errs.is_empty() {
        return Err(ApiError::invalid(def, &name, &errs));
    }
    admission::validate(sim, &attrs, &obj, None).await?;

    let mut inner = sim.lock();
    check_namespace(&inner, def, url_ns, &name)?;
    let ns = if def.namespaced {
        url_ns.unwrap_or_default()
    } else {
        ""
    };
    if inner.store.contains(&def.store, ns, &name) {
        return Err(ApiError::already_exists(def, &name));
    }
    if ctx.dry_run() {
        return Ok((Written { obj, stored: None }, unknown));
    }
    let rv = inner.store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let stored = inner.store.put(&def.store, ns, &name, &obj, rv);
    if def.builtin == Builtin::Crd {
        rebuild_registry(&mut inner);
    }
    Ok((
        Written {
            obj,
            stored: Some(stored),
        },
        unknown,
    ))
}

/// NamespaceLifecycle: the namespace must exist and not be terminating.
fn check_namespace(
    inner: &Inner,
    def: &ResourceDef,
    url_ns: Option<&str>,
    name: &str,
) -> ApiResult<()> {
    if !def.namespaced {
        return Ok(());
    }
    let ns = url_ns.unwrap_or_default();
    match inner.store.get(&StoreKey::new("", "namespaces"), "", ns) {
        None => Err(ApiError::not_found_gr("", "namespaces", ns)),
        Some(n) if is_deleting(&n) => Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            def.gr()
        ))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- update / patch

enum Change<'a> {
    Put(&'a Value),
    Merge(&'a Value),
    Strategic(&'a Value),
    Json(&'a [u8]),
    Apply { applied: &'a Value, force: bool },
}

async fn update(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq, body: &[u8]) -> ApiResult<Response> {
    let obj = parse_body(body, &ctx.content_type)?;
    check_type(&rr.def, &obj)?;
    let body_name = str_at(&obj, "metadata", "name");
    if !body_name.is_empty() && body_name != rr.name_str() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            rr.name_str()
        )));
    }
    let obj = ingest(&rr.def, obj);
    let (written, unknown, code) = write_existing(sim, ctx, rr, Change::Put(&obj)).await?;
    let mut resp = written.response(&rr.def, code);
    warning_headers(&mut resp, &unknown);
    Ok(resp)
}

async fn patch_op(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq, body: &[u8]) -> ApiResult<Response> {
    let ct = ctx
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if ctx.q_bool("force") && ct != "application/apply-patch+yaml" {
        return Err(ApiError::bad_request(
            "force may not be specified for non-apply patch",
        ));
    }
    let parsed;
    let change = match ct.as_str() {
        "application/json-patch+json" => Change::Json(body),
        "application/merge-patch+json" => {
            parsed = parse_json_any(body)?;
            Change::Merge(&parsed)
        }
        "application/strategic-merge-patch+json" => {
            if rr.def.is_custom() {
                return Err(ApiError::unsupported_media(&ct));
            }
            parsed = parse_json_any(body)?;
            Change::Strategic(&parsed)
        }
        "application/apply-patch+yaml" | "application/apply-patch+json" => {
            if ctx.q("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            parsed = parse_body(body, "yaml")?;
            check_type(&rr.def, &parsed)?;
            if parsed["apiVersion"].is_null() || parsed["kind"].is_null() {
                return Err(ApiError::bad_request(
                    "invalid object type: apiVersion and kind must be set for apply",
                ));
            }
            let n = str_at(&parsed, "metadata", "name");
            if n != rr.name_str() {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({})",
                    rr.name_str()
                )));
            }
            Change::Apply {
                applied: &parsed,
                force: ctx.q_bool("force"),
            }
        }
        other => return Err(ApiError::unsupported_media(other)),
    };
    let (written, unknown, code) = write_existing(sim, ctx, rr, change).await?;
    let mut resp = written.response(&rr.def, code);
    warning_headers(&mut resp, &unknown);
    Ok(resp)
}

fn parse_json_any(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Read-modify-write of an existing object with optimistic retries (GuaranteedUpdate).
async fn write_existing(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    rr: &ResReq,
    change: Change<'_>,
) -> ApiResult<(Written, Vec<String>, StatusCode)> {
    let def = &rr.def;
    let scope = rr.scope();
    let ns = if def.namespaced { rr.ns_str() } else { "" };
    let name = rr.name_str();
    for _attempt in 0..16 {
        let current_stored = sim.lock().store.get_stored(&def.store, ns, name).cloned();
        let current = current_stored.as_ref().map(|s| s.value());
        let Some(current) = current else {
            if let Change::Apply { applied, force } = &change
                && scope != Scope::Status
            {
                let manager = ctx.manager(false);
                let now = now_rfc3339();
                let req = ApplyRequest {
                    manager: &manager,
                    force: *force,
                    scope,
                    schema: def.schema.as_ref(),
                    api_version: &def.api_version(),
                    now: &now,
                };
                let empty = json!({"metadata": {}});
                let result = managed::apply(&empty, applied, &req)
                    .map_err(|c| ApiError::apply_conflicts(def, &c, &def.api_version()))?;
                let mut obj = (*applied).clone();
                if let Some(mf) = result["metadata"].get("managedFields") {
                    obj["metadata"]["managedFields"] = mf.clone();
                }
                match create_object(sim, ctx, def, rr.ns.as_deref(), obj, &manager, Some(result))
                    .await
                {
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    r => {
                        let (v, u) = r?;
                        return Ok((v, u, StatusCode::CREATED));
                    }
                }
            }
            return Err(ApiError::not_found(def, name));
        };
        let cur_rv = str_at(&current, "metadata", "resourceVersion").to_string();
        // What a patch applies to: the object as this resource shows it.
        let presented = || present(def, &current);
        let now = now_rfc3339();
        let manager = ctx.manager(!matches!(change, Change::Apply { .. }));
        let mut is_apply = false;
        let mut new = match &change {
            Change::Put(obj) => (*obj).clone(),
            Change::Merge(p) => {
                let mut d = presented();
                patch::merge_patch(&mut d, p);
                d
            }
            Change::Strategic(p) => {
                let mut d = presented();
                patch::strategic_merge(&mut d, p);
                d
            }
            Change::Json(body) => {
                let mut d = presented();
                patch::json_patch(&mut d, body)?;
                d
            }
            Change::Apply { applied, force } => {
                is_apply = true;
                let req = ApplyRequest {
                    manager: &manager,
                    force: *force,
                    scope,
                    schema: def.schema.as_ref(),
                    api_version: &def.api_version(),
                    now: &now,
                };
                let mut r = managed::apply(&presented(), applied, &req)
                    .map_err(|c| ApiError::apply_conflicts(def, &c, &def.api_version()))?;
                let arv = str_at(applied, "metadata", "resourceVersion");
                r["metadata"]["resourceVersion"] = if arv.is_empty() {
                    json!(cur_rv)
                } else {
                    json!(arv)
                };
                r
            }
        };
        if !matches!(change, Change::Put(_)) {
            if let Err(e) = ensure_shape(&new) {
                return Err(ApiError::patch_failed(e.message));
            }
            new = ingest(def, new);
        }
        // resourceVersion precondition
        let req_rv = str_at(&new, "metadata", "resourceVersion").to_string();
        if req_rv.is_empty() {
            if matches!(change, Change::Put(_)) && def.is_custom() {
                return Err(ApiError::invalid(
                    def,
                    name,
                    &[FieldError::invalid(
                        "metadata.resourceVersion",
                        &json!("0x0"),
                        "must be specified for an update",
                    )],
                ));
            }
        } else if req_rv != cur_rv {
            return Err(ApiError::modified(def, name));
        }
        let applied_managed = new["metadata"].get("managedFields").cloned();
        let mut new = prepare_update(def, scope, &current, new);
        let mut unknown = vec![];
        normalise(def, &mut new, &mut unknown);
        strict_check(ctx, &unknown)?;
        if !is_apply {
            managed::record_update(
                Some(&current),
                &mut new,
                &manager,
                &def.api_version(),
                scope,
                def.schema.as_ref(),
                &now,
            );
        } else {
            // apply computed the managedFields itself
            match applied_managed {
                Some(mf) => new["metadata"]["managedFields"] = mf,
                None => {
                    if let Some(md) = new["metadata"].as_object_mut() {
                        md.remove("managedFields");
                    }
                }
            }
        }
        new["metadata"]["resourceVersion"] = json!(cur_rv);
        let attrs = AdmissionAttrs::new(
            def,
            rr.ns.as_deref(),
            name,
            "UPDATE",
            rr.sub.as_deref(),
            &ctx.user,
            ctx.dry_run(),
        );
        admission::mutate(sim, &attrs, &mut new, Some(&current)).await?;
        ensure_shape(&new).map_err(|e| {
            ApiError::internal(format!(
                "Internal error occurred: a mutating webhook broke the object: {}",
                e.message
            ))
        })?;
        // PrepareForUpdate runs after mutating admission: webhooks cannot change status
        // through the main endpoint (or the rest through /status) either
        let managed_fields = new["metadata"].get("managedFields").cloned();
        let mut new = prepare_update(def, scope, &current, new);
        if let Some(mf) = managed_fields {
            new["metadata"]["managedFields"] = mf;
        }
        new["metadata"]["resourceVersion"] = json!(cur_rv);
        let mut unknown2 = vec![];
        normalise(def, &mut new, &mut unknown2);
        if def.builtin == Builtin::Crd && scope != Scope::Status {
            crd_status(&mut new);
        }
        if same_object(&current, &new) {
            // nothing changed: no write, no new resourceVersion, no event
            return Ok((
                Written {
                    obj: current,
                    stored: current_stored,
                },
                unknown,
                StatusCode::OK,
            ));
        }
        let errs = validate_obj(def, &new, Some(&current));
        if !errs.is_empty() {
            return Err(ApiError::invalid(def, name, &errs));
        }
        admission::validate(sim, &attrs, &new, Some(&current)).await?;

        let mut inner = sim.lock();
        let still = inner
            .store
            .get_stored(&def.store, ns, name)
            .map(|o| o.resource_version().to_string());
        if still.as_deref() != Some(cur_rv.as_str()) {
            if matches!(change, Change::Put(_)) && still.is_some() {
                return Err(ApiError::modified(def, name));
            }
            continue;
        }
        if ctx.dry_run() {
            return Ok((
                Written {
                    obj: new,
                    stored: None,
                },
                unknown,
                StatusCode::OK,
            ));
        }
        let rv = inner.store.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let stored = if is_deleting(&new)
            && finalizers(&new).is_empty()
            && !ns_finalizers_pending(def, &new)
        {
            let last = inner.store.remove(&def.store, ns, name, &new, rv);
            after_removal(&mut inner, def, ns);
            last
        } else {
            inner.store.put(&def.store, ns, name, &new, rv)
        };
        if def.builtin == Builtin::Crd {
            rebuild_registry(&mut inner);
        }
        return Ok((
            Written {
                obj: new,
                stored: Some(stored),
            },
            unknown,
            StatusCode::OK,
        ));
    }
    Err(ApiError::new(
        409,
        "Conflict",
        "too many concurrent updates; please retry",
    ))
}

fn ns_finalizers_pending(def: &ResourceDef, obj: &Value) -> bool {
    def.builtin == Builtin::Namespace
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
}

// ---------------------------------------------------------------- delete

async fn delete(sim: &Arc<Sim>, ctx: &Ctx, rr: &ResReq, body: &[u8]) -> ApiResult<Response> {
    let opts: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).unwrap_or_else(|_| json!({}))
    };
    let def = &rr.def;
    let ns = if def.namespaced { rr.ns_str() } else { "" };
    let name = rr.name_str();
    let current = sim
        .lock()
        .store
        .get(&def.store, ns, name)
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let attrs = AdmissionAttrs::new(
        def,
        rr.ns.as_deref(),
        name,
        "DELETE",
        None,
        &ctx.user,
        ctx.dry_run(),
    );
    admission::validate(sim, &attrs, &Value::Null, Some(&current)).await?;
    let mut inner = sim.lock();
    let current = inner
        .store
        .get(&def.store, ns, name)
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let pre = &opts["preconditions"];
    if let Some(uid) = pre["uid"].as_str()
        && uid != str_at(&current, "metadata", "uid")
    {
        return Err(ApiError::conflict(
            def,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                str_at(&current, "metadata", "uid")
            ),
        ));
    }
    if let Some(rv) = pre["resourceVersion"].as_str()
        && rv != str_at(&current, "metadata", "resourceVersion")
    {
        return Err(ApiError::conflict(
            def,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                str_at(&current, "metadata", "resourceVersion")
            ),
        ));
    }
    let dry = ctx.dry_run() || opts["dryRun"].as_array().is_some_and(|a| !a.is_empty());
    let out = delete_locked(&mut inner, def, ns, name, current, dry);
    Ok(deletion_response(def, &out))
}

/// Deletes (or, with finalizers, marks deleting) one object; returns its resulting state.
fn delete_locked(
    inner: &mut Inner,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    current: Value,
    dry: bool,
) -> Value {
    let pending = !finalizers(&current).is_empty()
        || def.builtin == Builtin::Namespace
        || (def.builtin == Builtin::Crd && has_instances(inner, &current));
    if pending {
        if is_deleting(&current) {
            return current;
        }
        let mut obj = current;
        obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if def.has_generation() {
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            obj["metadata"]["generation"] = json!(g);
        }
        if def.builtin == Builtin::Namespace {
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            obj["status"]["phase"] = json!("Terminating");
        }
        if dry {
            return obj;
        }
        let rv = inner.store.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.store.put(&def.store, ns, name, &obj, rv);
        match def.builtin {
            Builtin::Namespace => cascade_namespace(inner, name),
            Builtin::Crd => cascade_crd(inner, &obj),
            _ => {}
        }
        return inner.store.get(&def.store, ns, name).unwrap_or(obj);
    }
    if dry {
        return current;
    }
    let rv = inner.store.next_rv();
    let mut last = current;
    last["metadata"]["resourceVersion"] = json!(rv.to_string());
    inner.store.remove(&def.store, ns, name, &last, rv);
    after_removal(inner, def, ns);
    if def.builtin == Builtin::Crd {
        rebuild_registry(inner);
    }
    last
}

fn crd_store_key(crd: &Value) -> StoreKey {
    StoreKey::new(
        crd["spec"]["group"].as_str().unwrap_or_default(),
        crd["spec"]["names"]["plural"].as_str().unwrap_or_default(),
    )
}

fn has_instances(inner: &Inner, crd: &Value) -> bool {
    !inner.store.list(&crd_store_key(crd), None).is_empty()
}

fn cascade_namespace(inner: &mut Inner, ns: &str) {
    for key in inner.store.keys() {
        let Some(def) = inner.registry.by_store(&key) else {
            continue;
        };
        if !def.namespaced {
            continue;
        }
        for ((ons, oname), obj) in inner.store.list(&key, Some(ns)) {
            delete_locked(inner, &def, &ons, &oname, obj.value(), false);
        }
    }
    finish_namespace(inner, ns);
}

fn finish_namespace(inner: &mut Inner, ns: &str) {
    let key = StoreKey::new("", "namespaces");
    let Some(n) = inner.store.get(&key, "", ns) else {
        return;
    };
    if is_deleting(&n) && inner.store.count_in_namespace(ns) == 0 {
        let rv = inner.store.next_rv();
        let mut last = n;
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        last["spec"]["finalizers"] = json!([]);
        inner.store.remove(&key, "", ns, &last, rv);
    }
}

fn cascade_crd(inner: &mut Inner, crd: &Value) {
    let key = crd_store_key(crd);
    if let Some(def) = inner.registry.by_store(&key) {
        for ((ons, oname), obj) in inner.store.list(&key, None) {
            delete_locked(inner, &def, &ons, &oname, obj.value(), false);
        }
    }
    finish_crd(inner, &key);
}

fn finish_crd(inner: &mut Inner, key: &StoreKey) {
    let crd_key = StoreKey::new("apiextensions.k8s.io", "customresourcedefinitions");
    let name = format!("{}.{}", key.resource, key.group);
    let Some(crd) = inner.store.get(&crd_key, "", &name) else {
        return;
    };
    if is_deleting(&crd) && inner.store.list(key, None).is_empty() {
        let rv = inner.store.next_rv();
        let mut last = crd;
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.store.remove(&crd_key, "", &name, &last, rv);
        rebuild_registry(inner);
    }
}

/// Finishes namespace/CRD deletions waiting on this object.
fn after_removal(inner: &mut Inner, def: &ResourceDef, ns: &str) {
    if def.namespaced && !ns.is_empty() {
        finish_namespace(inner, ns);
    }
    if def.is_custom() {
        finish_crd(inner, &def.store);
    }
}

async fn delete_collection(
    sim: &Arc<Sim>,
    ctx: &Ctx,
    rr: &ResReq,
    _body: &[u8],
) -> ApiResult<Response> {
    let sel = Selectors::parse(&rr.def, ctx)?;
    let def = &rr.def;
    let mut inner = sim.lock();
    let ns = if def.namespaced {
        rr.ns.as_deref()
    } else {
        None
    };
    let mut items = vec![];
    for ((ons, oname), obj) in inner.store.list(&def.store, ns) {
        let obj = obj.value();
        if !sel.matches(&present(def, &obj)) {
            continue;
        }
        let out = delete_locked(&mut inner, def, &ons, &oname, obj, ctx.dry_run());
        items.push(present(def, &out));
    }
    let rv = inner.store.current_rv();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": def.list_kind(), "apiVersion": def.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

/// Stores an object at start-up (built-in namespaces, CRDs from --crds).
pub(crate) fn seed(
    inner: &mut Inner,
    group: &str,
    version: &str,
    plural: &str,
    mut obj: Value,
) -> anyhow::Result<()> {
    let def = inner
        .registry
        .lookup(group, version, plural)
        .ok_or_else(|| anyhow::anyhow!("unknown resource {group}/{version}/{plural}"))?;
    ensure_shape(&obj).map_err(|e| anyhow::anyhow!(e.message))?;
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    let name = str_at(&obj, "metadata", "name").to_string();
    {
        let md = meta_mut(&mut obj);
        md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        md.insert("creationTimestamp".into(), json!(now_rfc3339()));
        md.remove("resourceVersion");
    }
    if def.has_generation() {
        obj["metadata"]["generation"] = json!(1);
    }
    normalise(&def, &mut obj, &mut vec![]);
    let errs = validate_obj(&def, &obj, None);
    if !errs.is_empty() {
        anyhow::bail!("{}", ApiError::invalid(&def, &name, &errs).message);
    }
    match def.builtin {
        Builtin::Crd => crd_status(&mut obj),
        Builtin::Namespace => obj["status"] = json!({"phase": "Active"}),
        _ => {}
    }
    if inner.store.contains(&def.store, "", &name) {
        anyhow::bail!("{} {name} is defined twice", def.kind);
    }
    let rv = inner.store.next_rv();
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    inner.store.put(&def.store, "", &name, &obj, rv);
    if def.builtin == Builtin::Crd {
        rebuild_registry(inner);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_read_as_yaml_reads_them() {
        for body in [
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","labels":{"x":"1"}},"data":{"k":"v \u00e9 \/ \"q\""}}"#,
            r#"{"a":[1,-2,3.5,1e3,18446744073709551615,true,false,null,{}],"b":{"c":[]}}"#,
            "{\n  \"spec\": {\"n\": 0.25}\n}\n",
        ] {
            let yaml: Value = serde_norway::from_str(body).unwrap();
            assert_eq!(json_as_yaml(body.as_bytes()), Some(yaml), "{body}");
        }
        // Repeated keys, tabs, YAML proper, trailing text: left to the YAML parser.
        assert_eq!(json_as_yaml(br#"{"a":1,"a":2}"#), None);
        assert_eq!(json_as_yaml(b"{\"a\":\t1}"), None);
        assert_eq!(json_as_yaml(b"a: 1\n"), None);
        assert_eq!(json_as_yaml(br#"{"a":1} x"#), None);
    }
}
