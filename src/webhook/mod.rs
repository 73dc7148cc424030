//! The admission webhook served by `accessgrant-operator run` over TLS.
//!
//! - `POST /mutate` (MutatingWebhookConfiguration): stamps the requester (userInfo of the
//!   AdmissionReview) into `accessgrant.io/requester`, signed in
//!   `accessgrant.io/requester-signature` ([`crate::stamp`]). A client may not supply or change
//!   a stamp: on create it is refused, on an update that does not change the spec the old stamp
//!   is kept, on an update that changes the spec the new requester is stamped.
//! - `POST /validate` (ValidatingWebhookConfiguration): refuses edits of the immutable target,
//!   a missing or foreign stamp, and every grant that validation or AccessPolicy refuses, with
//!   the very message the controller would record ([`crate::guard::decide`]).
//!
//! Both are pure functions of the review (plus policies, namespace labels, key and `now`), so
//! the property tests can compare them with the controller's [`crate::controller::judge`].

pub mod certs;
pub mod protect;

use crate::api::{AccessGrant, AccessPolicy};
use crate::guard::{GrantContext, Requester, decide};
use crate::stamp::{REQUESTER_ANNOTATION, SIGNATURE_ANNOTATION, StampCheck, StampKey};
use chrono::{DateTime, Utc};
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::json;
use std::collections::BTreeMap;

/// Reason for refusals of the stamp annotations.
pub const REASON_STAMP: &str = "RequesterStamp";
/// Reason for edits of immutable fields.
pub const REASON_IMMUTABLE: &str = "FieldImmutable";

fn deny(resp: AdmissionResponse, code: u16, reason: &str, message: String) -> AdmissionResponse {
    let mut r = resp.deny(message);
    r.result.code = code;
    r.result.reason = reason.to_string();
    r
}

fn parse(obj: &DynamicObject) -> Result<AccessGrant, String> {
    let v = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_json::from_value::<AccessGrant>(v).map_err(|e| format!("the object cannot be read: {e}"))
}

fn stamp_values(g: &AccessGrant) -> (Option<&String>, Option<&String>) {
    let a = g.metadata.annotations.as_ref();
    (
        a.and_then(|a| a.get(REQUESTER_ANNOTATION)),
        a.and_then(|a| a.get(SIGNATURE_ANNOTATION)),
    )
}

/// JSON pointer escaping (RFC 6901).
fn pointer_key(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn set_annotations_patch(g: &AccessGrant, values: &[(&str, &str)]) -> json_patch::Patch {
    let mut ops = vec![];
    if g.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    for (k, v) in values {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_key(k)), "value": v}));
    }
    serde_json::from_value(serde_json::Value::Array(ops)).unwrap_or(json_patch::Patch(vec![]))
}

fn with_patch(resp: AdmissionResponse, patch: json_patch::Patch) -> AdmissionResponse {
    let fallback = resp.clone();
    match resp.with_patch(patch) {
        Ok(r) => r,
        Err(e) => deny(
            fallback,
            500,
            "InternalError",
            format!("cannot encode patch: {e}"),
        ),
    }
}

/// The mutating webhook's answer.
pub fn mutate(
    req: &AdmissionRequest<DynamicObject>,
    key: &StampKey,
    now: DateTime<Utc>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(obj) = &req.object else {
        return resp;
    };
    let grant = match parse(obj) {
        Ok(g) => g,
        Err(e) => return deny(resp, 422, "Invalid", e),
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let (payload, sig) = stamp_values(&grant);
    let user = &req.user_info;
    let username = user.username.clone().unwrap_or_default();
    let groups = user.groups.clone().unwrap_or_default();
    let fresh = |g: &AccessGrant| {
        let stamp = crate::stamp::make_stamp(&username, &groups, &g.metadata, &g.spec, now);
        key.sign(&ns, &stamp)
    };
    match req.operation {
        Operation::Create => {
            if payload.is_some() || sig.is_some() {
                return deny(
                    resp,
                    403,
                    REASON_STAMP,
                    format!(
                        "metadata.annotations[{REQUESTER_ANNOTATION}] and [{SIGNATURE_ANNOTATION}] are written only by the operator's admission webhook; remove them (a requester cannot be supplied or forged)"
                    ),
                );
            }
            let (p, s) = fresh(&grant);
            with_patch(
                resp,
                set_annotations_patch(
                    &grant,
                    &[(REQUESTER_ANNOTATION, &p), (SIGNATURE_ANNOTATION, &s)],
                ),
            )
        }
        _ => {
            let old = match req.old_object.as_ref().map(parse) {
                Some(Ok(o)) => o,
                Some(Err(e)) => return deny(resp, 422, "Invalid", e),
                None => return resp,
            };
            let (old_p, old_s) = stamp_values(&old);
            let removed = payload.is_none() && sig.is_none();
            if !removed && (payload != old_p || sig != old_s) {
                return deny(
                    resp,
                    403,
                    REASON_STAMP,
                    format!(
                        "metadata.annotations[{REQUESTER_ANNOTATION}] and [{SIGNATURE_ANNOTATION}] cannot be set or changed by clients; they record who asked"
                    ),
                );
            }
            if grant.spec != old.spec {
                // A new request: whoever changed the spec is its requester.
                let (p, s) = fresh(&grant);
                return with_patch(
                    resp,
                    set_annotations_patch(
                        &grant,
                        &[(REQUESTER_ANNOTATION, &p), (SIGNATURE_ANNOTATION, &s)],
                    ),
                );
            }
            match (removed, old_p, old_s) {
                // Dropped by a client (e.g. a server-side apply that does not list them): keep
                // the original requester.
                (true, Some(p), Some(s)) => with_patch(
                    resp,
                    set_annotations_patch(
                        &grant,
                        &[(REQUESTER_ANNOTATION, p), (SIGNATURE_ANNOTATION, s)],
                    ),
                ),
                _ => resp,
            }
        }
    }
}

/// The requester of an admission request, as the guard sees it.
pub fn requester_of(req: &AdmissionRequest<DynamicObject>) -> Option<Requester> {
    let username = req.user_info.username.clone().filter(|u| !u.is_empty())?;
    Some(Requester {
        username,
        groups: req.user_info.groups.clone().unwrap_or_default(),
    })
}

/// The validating webhook's answer.
pub fn validate(
    req: &AdmissionRequest<DynamicObject>,
    policies: &[AccessPolicy],
    namespace_labels: BTreeMap<String, String>,
    key: &StampKey,
    now: DateTime<Utc>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(obj) = &req.object else {
        return resp;
    };
    let grant = match parse(obj) {
        Ok(g) => g,
        Err(e) => return deny(resp, 422, "Invalid", e),
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let mut created = chrono::SubsecRound::trunc_subsecs(now, 0);
    if req.operation == Operation::Update {
        let old = match req.old_object.as_ref().map(parse) {
            Some(Ok(o)) => o,
            Some(Err(e)) => return deny(resp, 422, "Invalid", e),
            None => return resp,
        };
        for (field, changed) in [
            ("spec.jit", old.spec.jit != grant.spec.jit),
            ("spec.pim", old.spec.pim != grant.spec.pim),
        ] {
            if changed {
                return deny(
                    resp,
                    422,
                    REASON_IMMUTABLE,
                    format!("{field} is immutable; create a new AccessGrant for another target"),
                );
            }
        }
        if stamp_values(&old) != stamp_values(&grant) && old.spec == grant.spec {
            return deny(
                resp,
                403,
                REASON_STAMP,
                format!(
                    "metadata.annotations[{REQUESTER_ANNOTATION}] cannot be changed without a spec change"
                ),
            );
        }
        if old.spec == grant.spec {
            // Metadata only (finalizers, labels): nothing new is asked; the controller keeps
            // judging the grant against current policy.
            return resp;
        }
        if let Some(t) = old.metadata.creation_timestamp.as_ref()
            && let Some(c) = DateTime::from_timestamp(t.0.as_second(), 0)
        {
            created = c;
        }
    }
    let requester = requester_of(req);
    // The stamp on the object must be ours and name this request's user: otherwise the
    // mutating webhook did not run (or was bypassed) and the record of who asked is wrong.
    let empty = BTreeMap::new();
    let name = if req.name.is_empty() {
        grant.metadata.name.clone().unwrap_or_default()
    } else {
        req.name.clone()
    };
    let stamp_problem = match crate::stamp::verify_instance(
        key,
        &ns,
        &name,
        crate::stamp::Instance::of(&grant.metadata),
        &grant.spec,
        grant.metadata.annotations.as_ref().unwrap_or(&empty),
    ) {
        StampCheck::Valid(s) => match &requester {
            Some(r) if r.username == s.user => None,
            _ => Some(format!(
                "the requester stamp names {:?}, but this request comes from {:?}",
                s.user,
                requester
                    .as_ref()
                    .map(|r| r.username.as_str())
                    .unwrap_or_default()
            )),
        },
        StampCheck::Missing => {
            Some("no requester stamp: is the operator's mutating webhook registered?".to_string())
        }
        StampCheck::Invalid(p) => Some(p),
    };
    if let Some(problem) = stamp_problem {
        return deny(resp, 403, REASON_STAMP, problem);
    }
    if grant.spec.suspend == Some(true) {
        // Suspending only ever takes access away: never block it on policy (which may have
        // changed since the grant was made); resuming is judged like any new request.
        return resp;
    }
    let gctx = GrantContext {
        namespace: ns,
        namespace_labels,
        created: Some(created),
        requester,
    };
    let decision = decide(&grant.spec, policies, &gctx);
    match decision.refusal() {
        Some((rule, message)) => {
            let code = if decision.valid.is_err() { 422 } else { 403 };
            deny(resp, code, &rule, message)
        }
        None => {
            let mut warnings = vec![];
            if grant.spec.break_glass == Some(true) {
                warnings.push(
                    "break-glass grant: a Warning event, an audit line and a metric record it"
                        .to_string(),
                );
            }
            if grant.spec.dry_run == Some(true) {
                warnings.push("dry run: nothing will be requested from Azure".to_string());
            }
            let mut r = resp;
            if !warnings.is_empty() {
                r.warnings = Some(warnings);
            }
            r
        }
    }
}

/// Reads an AdmissionReview body into a request, or the response to send when it is unusable.
pub fn request_of(
    review: AdmissionReview<DynamicObject>,
) -> Result<AdmissionRequest<DynamicObject>, Box<AdmissionResponse>> {
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| {
            Box::new(AdmissionResponse::invalid(e.to_string()))
        })
}

/// Shared state of the webhook server.
#[derive(Clone)]
pub struct WebhookState {
    /// Signing key.
    pub key: StampKey,
    /// Kubernetes client (namespace labels).
    pub client: kube::Client,
    /// AccessPolicies.
    pub policies: kube::runtime::reflector::Store<AccessPolicy>,
    pub metrics: crate::telemetry::Metrics,
    /// The operator's own Kubernetes user name (from a SelfSubjectReview at start): the only
    /// identity that may write status or remove the finalizer of a grant that may hold access.
    pub operator: String,
}

/// This process's own Kubernetes user name, as the API server sees it (SelfSubjectReview).
pub async fn whoami(client: &kube::Client) -> Result<String, kube::Error> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let r = api
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await?;
    Ok(r.status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

/// `/mutate` and `/validate`.
pub fn router(state: WebhookState) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route("/mutate", post(handle_mutate))
        .route("/validate", post(handle_validate))
        .with_state(state)
}

type Review = axum::Json<AdmissionReview<DynamicObject>>;

/// The review as JSON with the patch base64-encoded, the canonical form of a Go `[]byte`
/// (kube-rs serialises it as an array of numbers, which kube-apiserver also reads).
fn reply(resp: AdmissionResponse) -> axum::Json<serde_json::Value> {
    use base64::Engine as _;
    let mut v = serde_json::to_value(resp.into_review()).unwrap_or_default();
    if let Some(p) = v.pointer_mut("/response/patch")
        && let Some(bytes) = p.as_array().map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        })
    {
        *p = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    axum::Json(v)
}

async fn handle_mutate(
    axum::extract::State(s): axum::extract::State<WebhookState>,
    axum::Json(review): Review,
) -> axum::Json<serde_json::Value> {
    let resp = match request_of(review) {
        Ok(req) => {
            let r = mutate(&req, &s.key, crate::clock::now());
            log_review("mutate", &req, &r);
            r
        }
        Err(r) => *r,
    };
    s.metrics.admission("mutate", resp.allowed);
    reply(resp)
}

async fn handle_validate(
    axum::extract::State(s): axum::extract::State<WebhookState>,
    axum::Json(review): Review,
) -> axum::Json<serde_json::Value> {
    let resp = match request_of(review) {
        Ok(req) if let Some(r) = protect::refusal(&req, &s.operator) => {
            log_review("validate", &req, &r);
            r
        }
        // Status writes are the operator's own (anyone else's is refused above).
        Ok(req) if req.sub_resource.as_deref() == Some("status") => AdmissionResponse::from(&req),
        Ok(req) => {
            let labels = match req.namespace.as_deref() {
                Some(ns) => {
                    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                        kube::Api::all(s.client.clone());
                    match api.get_opt(ns).await {
                        Ok(n) => Ok(n.and_then(|n| n.metadata.labels).unwrap_or_default()),
                        Err(e) => Err(e),
                    }
                }
                None => Ok(BTreeMap::new()),
            };
            match labels {
                Ok(labels) => {
                    let policies: Vec<AccessPolicy> =
                        s.policies.state().iter().map(|p| (**p).clone()).collect();
                    let r = validate(&req, &policies, labels, &s.key, crate::clock::now());
                    log_review("validate", &req, &r);
                    r
                }
                Err(e) => deny(
                    AdmissionResponse::from(&req),
                    500,
                    "InternalError",
                    format!("cannot read the namespace's labels: {e}"),
                ),
            }
        }
        Err(r) => *r,
    };
    s.metrics.admission("validate", resp.allowed);
    reply(resp)
}

fn log_review(webhook: &str, req: &AdmissionRequest<DynamicObject>, r: &AdmissionResponse) {
    tracing::info!(
        webhook,
        operation = ?req.operation,
        ns = req.namespace.as_deref().unwrap_or_default(),
        name = %req.name,
        user = req.user_info.username.as_deref().unwrap_or_default(),
        allowed = r.allowed,
        reason = %r.result.reason,
        message = %r.result.message,
        "admission review"
    );
}
