//! Calls to registered admission webhooks (AdmissionReview v1): mutating first, then (after
//! schema validation) validating, honouring rules, selectors, timeoutSeconds and failurePolicy.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::error::{ApiError, ApiResult};
use super::registry::{Builtin, ResourceDef, StoreKey};
use super::server::Sim;
use super::store;

pub(crate) struct AdmissionAttrs<'a> {
    pub def: &'a ResourceDef,
    pub ns: Option<&'a str>,
    pub name: &'a str,
    pub operation: &'a str,
    pub sub: Option<&'a str>,
    pub user: &'a UserInfo,
    pub dry_run: bool,
}

impl<'a> AdmissionAttrs<'a> {
    pub fn new(
        def: &'a ResourceDef,
        ns: Option<&'a str>,
        name: &'a str,
        operation: &'a str,
        sub: Option<&'a str>,
        user: &'a UserInfo,
        dry_run: bool,
    ) -> Self {
        Self {
            def,
            ns,
            name,
            operation,
            sub,
            user,
            dry_run,
        }
    }
}

fn list_has(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str() == Some("*") || x.as_str() == Some(want))
    })
}

fn rule_matches(rule: &Value, a: &AdmissionAttrs<'_>) -> bool {
    let resource = match a.sub {
        Some(s) => format!("{}/{s}", a.def.plural),
        None => a.def.plural.clone(),
    };
    let resources_ok = rule["resources"].as_array().is_some_and(|rs| {
        rs.iter().filter_map(Value::as_str).any(|r| {
            r == resource
                || (r == "*" && a.sub.is_none())
                || r == "*/*"
                || (a.sub.is_some() && r == format!("*/{}", a.sub.unwrap_or_default()))
        })
    });
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Namespaced" => a.def.namespaced,
        "Cluster" => !a.def.namespaced,
        _ => true,
    };
    list_has(&rule["operations"], a.operation)
        && list_has(&rule["apiGroups"], &a.def.group)
        && list_has(&rule["apiVersions"], &a.def.version)
        && resources_ok
        && scope_ok
}

/// metav1.LabelSelector (matchLabels + matchExpressions) against a label map.
pub(crate) fn selector_matches(sel: &Value, labels: &Value) -> bool {
    if sel.is_null() {
        return true;
    }
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let ml_ok = sel["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| get(k) == v.as_str()));
    let me_ok = sel["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let vals: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => get(key).is_some_and(|v| vals.contains(&v)),
                "NotIn" => get(key).is_none_or(|v| !vals.contains(&v)),
                "Exists" => get(key).is_some(),
                "DoesNotExist" => get(key).is_none(),
                _ => false,
            }
        })
    });
    ml_ok && me_ok
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let mut cur: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN CERTIFICATE") {
            cur = Some(String::new());
        } else if line.starts_with("-----END CERTIFICATE") {
            if let Some(b) = cur.take()
                && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b)
            {
                out.push(der);
            }
        } else if let Some(b) = cur.as_mut() {
            b.push_str(line);
        }
    }
    out
}

struct Hook {
    name: String,
    config: Value,
}

fn hooks(
    sim: &Sim,
    mutating: bool,
    a: &AdmissionAttrs<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<Hook> {
    let resource = if mutating {
        "mutatingwebhookconfigurations"
    } else {
        "validatingwebhookconfigurations"
    };
    let inner = sim.lock();
    let configs = inner.store.list(
        &StoreKey::new("admissionregistration.k8s.io", resource),
        None,
    );
    if configs.is_empty() {
        return vec![];
    }
    let ns_labels =
        a.ns.and_then(|ns| inner.store.get(&StoreKey::new("", "namespaces"), "", ns))
            .map(|n| n["metadata"]["labels"].clone())
            .unwrap_or(Value::Null);
    let obj_labels = if obj.is_null() {
        old.map(|o| o["metadata"]["labels"].clone())
            .unwrap_or(Value::Null)
    } else {
        obj["metadata"]["labels"].clone()
    };
    let mut out = vec![];
    for (_, cfg) in configs {
        let cfg = cfg.value();
        for w in cfg["webhooks"].as_array().into_iter().flatten() {
            let rules_ok = w["rules"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| rule_matches(r, a)));
            let ns_ok = !a.def.namespaced
                || a.ns.is_none()
                || selector_matches(&w["namespaceSelector"], &ns_labels);
            let obj_ok = selector_matches(&w["objectSelector"], &obj_labels);
            if rules_ok && ns_ok && obj_ok && match_conditions(w, a, obj, old) {
                out.push(Hook {
                    name: w["name"].as_str().unwrap_or_default().to_string(),
                    config: w.clone(),
                });
            }
        }
    }
    out
}

/// The webhook's `matchConditions` (CEL over `object`, `oldObject`, `request`): all must hold
/// for the webhook to be called. An expression that fails to evaluate counts as not matching.
fn match_conditions(w: &Value, a: &AdmissionAttrs<'_>, obj: &Value, old: Option<&Value>) -> bool {
    use kube::core::cel::{
        AdmissionRequest, GroupVersionKind, GroupVersionResource, VapEvaluator, VapExpression,
    };
    let Some(conds) = w["matchConditions"].as_array().filter(|c| !c.is_empty()) else {
        return true;
    };
    let exprs: Vec<VapExpression> = conds
        .iter()
        .map(|c| VapExpression {
            expression: c["expression"].as_str().unwrap_or("false").to_string(),
            message: None,
            message_expression: None,
        })
        .collect();
    let request = AdmissionRequest {
        operation: a.operation.to_string(),
        username: a.user.username.clone(),
        uid: a.user.uid.clone(),
        groups: a.user.groups.clone(),
        name: a.name.to_string(),
        namespace: a.ns.unwrap_or_default().to_string(),
        dry_run: a.dry_run,
        kind: GroupVersionKind {
            group: a.def.group.clone(),
            version: a.def.version.clone(),
            kind: a.def.kind.clone(),
        },
        resource: GroupVersionResource {
            group: a.def.group.clone(),
            version: a.def.version.clone(),
            resource: a.def.plural.clone(),
        },
    };
    let mut builder = VapEvaluator::builder().object(obj.clone()).request(request);
    if let Some(old) = old {
        builder = builder.old_object(old.clone());
    }
    builder.build().evaluate(&exprs).iter().all(|r| r.passed)
}

fn review(a: &AdmissionAttrs<'_>, obj: &Value, old: Option<&Value>) -> Value {
    let kind = json!({"group": a.def.group, "version": a.def.version, "kind": a.def.kind});
    let resource =
        json!({"group": a.def.group, "version": a.def.version, "resource": a.def.plural});
    let options = match a.operation {
        "CREATE" => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
        "UPDATE" => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
        _ => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
    };
    let mut req = json!({
        "uid": uuid::Uuid::new_v4().to_string(),
        "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource,
        "name": a.name,
        "operation": a.operation,
        "userInfo": {"username": a.user.username, "uid": a.user.uid, "groups": a.user.groups},
        "object": if obj.is_null() { Value::Null } else { obj.clone() },
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": a.dry_run,
        "options": options,
    });
    if let Some(ns) = a.ns {
        req["namespace"] = json!(ns);
    }
    if let Some(s) = a.sub {
        req["subResource"] = json!(s);
        req["requestSubResource"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// kube-apiserver refuses dry-run requests that would reach a webhook with side effects.
fn check_dry_run(hook: &Hook, a: &AdmissionAttrs<'_>) -> ApiResult<()> {
    let side_effects = hook.config["sideEffects"].as_str().unwrap_or("Unknown");
    if a.dry_run && !matches!(side_effects, "None" | "NoneOnDryRun") {
        return Err(ApiError::bad_request(format!(
            "admission webhook \"{}\" does not support dry run",
            hook.name
        )));
    }
    Ok(())
}

async fn call(hook: &Hook, body: &Value) -> Result<Value, String> {
    let cc = &hook.config["clientConfig"];
    let url = match cc["url"].as_str() {
        Some(u) => u.to_string(),
        None => {
            let svc = &cc["service"];
            format!(
                "https://{}.{}.svc:{}{}",
                svc["name"].as_str().unwrap_or_default(),
                svc["namespace"].as_str().unwrap_or_default(),
                svc["port"].as_i64().unwrap_or(443),
                svc["path"].as_str().unwrap_or_default()
            )
        }
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid webhook URL {url}: {e}"))?;
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let base_uri: http::Uri = base
        .parse()
        .map_err(|e| format!("invalid webhook URL {url}: {e}"))?;
    let mut config = kube::Config::new(base_uri);
    if let Some(ca) = cc["caBundle"].as_str() {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .map_err(|e| format!("caBundle is not base64: {e}"))?;
        let certs = pem_certs(&String::from_utf8_lossy(&pem));
        if !certs.is_empty() {
            config.root_cert = Some(certs);
        }
    }
    let timeout = Duration::from_secs(hook.config["timeoutSeconds"].as_u64().unwrap_or(10));
    config.read_timeout = Some(timeout);
    config.connect_timeout = Some(timeout);
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let body = body.to_string().into_bytes();
    // kube-apiserver retries a webhook call that failed in transport (connection refused or
    // reset, EOF: a replica going away) with exponential backoff (500 ms x1.5, 5 steps), all
    // within the hook's timeout; an HTTP answer is final.
    let attempts = async {
        let mut wait = Duration::from_millis(500);
        let mut tries = 0;
        loop {
            let req = http::Request::post(path)
                .header("content-type", "application/json")
                .body(body.clone())
                .map_err(|e| e.to_string())?;
            match client.request::<Value>(req).await {
                Ok(v) => return Ok(v),
                Err(e @ kube::Error::Api(_)) => return Err(e.to_string()),
                Err(e) if tries >= 4 => return Err(e.to_string()),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    wait = wait.mul_f64(1.5);
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("failed to call webhook: Post \"{url}\": {e}")),
        Err(_) => Err(format!(
            "failed to call webhook: Post \"{url}\": context deadline exceeded"
        )),
    }
}

fn denied(hook: &Hook, resp: &Value) -> ApiError {
    let st = &resp["status"];
    let deny = format!("admission webhook \"{}\" denied the request", hook.name);
    let msg = st["message"].as_str().filter(|m| !m.is_empty());
    let reason = st["reason"].as_str().unwrap_or_default();
    let message = match (msg, reason.is_empty()) {
        (Some(m), _) => format!("{deny}: {m}"),
        (None, false) => format!("{deny}: {reason}"),
        (None, true) => format!("{deny} without explanation"),
    };
    let code = st["code"].as_u64().filter(|c| *c >= 400).unwrap_or(400) as u16;
    let mut e = ApiError::new(code, reason, message);
    if !st["details"].is_null() {
        e.details = Some(st["details"].clone());
    }
    e
}

fn skip(a: &AdmissionAttrs<'_>) -> bool {
    // kube-apiserver never sends webhook configurations to webhooks
    matches!(
        a.def.builtin,
        Builtin::MutatingWebhook | Builtin::ValidatingWebhook
    )
}

pub(crate) async fn mutate(
    sim: &Arc<Sim>,
    a: &AdmissionAttrs<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    if skip(a) {
        return Ok(());
    }
    for hook in hooks(sim, true, a, obj, old) {
        check_dry_run(&hook, a)?;
        let body = review(a, obj, old);
        match call(&hook, &body).await {
            Ok(resp) => {
                let r = &resp["response"];
                if r["allowed"].as_bool() != Some(true) {
                    return Err(denied(&hook, r));
                }
                // Go's encoding/json reads a []byte from a base64 string or from an array of
                // numbers (what kube-rs sends), so kube-apiserver accepts both.
                let patch_bytes: Option<Vec<u8>> = match &r["patch"] {
                    Value::Null => None,
                    Value::String(p) => Some(base64::engine::general_purpose::STANDARD
                        .decode(p)
                        .map_err(|e| ApiError::internal(format!("Internal error occurred: webhook \"{}\" returned an undecodable patch: {e}", hook.name)))?),
                    Value::Array(a) => Some(a.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect::<Option<Vec<u8>>>().ok_or_else(|| ApiError::internal(format!("Internal error occurred: webhook \"{}\" returned a patch that is not a byte array", hook.name)))?),
                    other => return Err(ApiError::internal(format!("Internal error occurred: webhook \"{}\" returned a patch of type {other}", hook.name))),
                };
                if let Some(bytes) = patch_bytes {
                    let patch: json_patch::Patch = serde_json::from_slice(&bytes).map_err(|e| {
                        ApiError::internal(format!("Internal error occurred: webhook \"{}\" returned an invalid JSONPatch: {e}", hook.name))
                    })?;
                    json_patch::patch(obj, &patch).map_err(|e| {
                        ApiError::internal(format!("Internal error occurred: webhook \"{}\" returned a JSONPatch that does not apply: {e}", hook.name))
                    })?;
                }
            }
            Err(e) => fail(&hook, e)?,
        }
    }
    Ok(())
}

fn fail(hook: &Hook, e: String) -> ApiResult<()> {
    if hook.config["failurePolicy"].as_str() == Some("Ignore") {
        tracing::warn!("webhook {} failed (ignored): {e}", hook.name);
        return Ok(());
    }
    Err(ApiError::internal(format!(
        "Internal error occurred: failed calling webhook \"{}\": {e}",
        hook.name
    )))
}

pub(crate) async fn validate(
    sim: &Arc<Sim>,
    a: &AdmissionAttrs<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    if skip(a) {
        return Ok(());
    }
    for hook in hooks(sim, false, a, obj, old) {
        check_dry_run(&hook, a)?;
        let body = review(a, obj, old);
        match call(&hook, &body).await {
            Ok(resp) => {
                if resp["response"]["allowed"].as_bool() != Some(true) {
                    return Err(denied(&hook, &resp["response"]));
                }
            }
            Err(e) => fail(&hook, e)?,
        }
    }
    let _ = store::parse_label_selector;
    Ok(())
}
