//! The requester stamp: the admission webhook records who created (or changed the spec of) a
//! grant in two annotations and signs them with the operator's key (HMAC-SHA256); the
//! controller trusts a requester only when the signature, the object's namespace and name, a
//! digest of the current spec and the object instance all check out. Pure: no I/O, `now` is a
//! parameter.
//!
//! **The instance.** A stamp made on a spec change (UPDATE) names the object's uid. On CREATE
//! the API server assigns the uid only after mutating admission, so a create stamp cannot name
//! it; instead it must not be older than the object: its time may precede the object's
//! `creationTimestamp` by at most [`CREATE_WINDOW`] (the most a mutating webhook call may take).
//! A stamp copied onto a re-created object of the same name (delete, then create with the old
//! annotations while the webhooks are bypassed) is therefore refused: its uid is another
//! object's, or it is older than the object.

use crate::api::{AccessGrantSpec, Provenance};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The stamp itself (JSON), readable by humans.
pub const REQUESTER_ANNOTATION: &str = "accessgrant.io/requester";
/// Its signature: `hmac-sha256:v1:<base64>`.
pub const SIGNATURE_ANNOTATION: &str = "accessgrant.io/requester-signature";
/// A revision annotation a GitOps pipeline may set (e.g. Argo CD `commonAnnotations` with
/// `${ARGOCD_APP_REVISION}`), recorded as provenance.
pub const SOURCE_REVISION_ANNOTATION: &str = "accessgrant.io/source-revision";
const SIG_PREFIX: &str = "hmac-sha256:v1:";

/// What the webhook saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stamp {
    /// Kubernetes user name from the AdmissionReview's userInfo.
    pub user: String,
    /// Groups from the AdmissionReview's userInfo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// When it was stamped.
    pub at: DateTime<Utc>,
    /// The object's name, or `generateName:<prefix>` when the name was not yet chosen.
    pub name: String,
    /// SHA-256 of the spec the user asked for (hex).
    pub spec: String,
    /// GitOps provenance present on the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// The object's uid, when it had one (stamps made on UPDATE; see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// How much older than the object's `creationTimestamp` a create stamp may be: the longest a
/// mutating webhook call may take (`timeoutSeconds` is at most 30), plus a second for
/// `creationTimestamp`'s whole-second precision.
pub const CREATE_WINDOW: chrono::Duration = chrono::Duration::seconds(31);

/// The object a stamp is checked against, once it exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct Instance<'a> {
    pub uid: Option<&'a str>,
    pub created: Option<DateTime<Utc>>,
}

impl<'a> Instance<'a> {
    pub fn of(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Instance {
            uid: meta.uid.as_deref().filter(|u| !u.is_empty()),
            created: meta
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0)),
        }
    }
}

/// The operator's signing key (shared by all replicas through a Secret or a mounted file).
#[derive(Clone)]
pub struct StampKey(ring::hmac::Key);

impl std::fmt::Debug for StampKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StampKey(<redacted>)")
    }
}

impl StampKey {
    /// A key from secret bytes (at least 32).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 32 {
            return Err(format!(
                "the stamp key must have at least 32 bytes, got {}",
                bytes.len()
            ));
        }
        Ok(Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)))
    }

    /// 32 fresh random bytes (to store in a Secret) and the key made of them.
    pub fn generate() -> Result<(Vec<u8>, Self), String> {
        let mut bytes = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no randomness for a stamp key".to_string())?;
        let key = Self::from_bytes(&bytes)?;
        Ok((bytes, key))
    }

    fn tag(&self, namespace: &str, payload: &str) -> String {
        let msg = format!("accessgrant-stamp-v1\n{namespace}\n{payload}");
        let tag = ring::hmac::sign(&self.0, msg.as_bytes());
        format!(
            "{SIG_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }

    /// The two annotation values for a stamp.
    pub fn sign(&self, namespace: &str, stamp: &Stamp) -> (String, String) {
        let payload = serde_json::to_string(stamp).unwrap_or_default();
        let sig = self.tag(namespace, &payload);
        (payload, sig)
    }
}

/// SHA-256 (hex) of the spec as the operator reads it (serde's field order is fixed, so the
/// digest does not depend on how the client wrote the YAML).
pub fn spec_digest(spec: &AccessGrantSpec) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The result of checking an object's stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StampCheck {
    /// No stamp annotations at all (created without the webhook).
    Missing,
    /// A stamp that must not be trusted, and why.
    Invalid(String),
    /// A valid stamp.
    Valid(Stamp),
}

/// Checks the stamp annotations of an object against its namespace, name and current spec
/// (before the object exists: no instance check).
pub fn verify(
    key: &StampKey,
    namespace: &str,
    name: &str,
    spec: &AccessGrantSpec,
    annotations: &BTreeMap<String, String>,
) -> StampCheck {
    verify_instance(key, namespace, name, Instance::default(), spec, annotations)
}

/// [`verify`], and the stamp must have been made for this object instance.
pub fn verify_instance(
    key: &StampKey,
    namespace: &str,
    name: &str,
    instance: Instance<'_>,
    spec: &AccessGrantSpec,
    annotations: &BTreeMap<String, String>,
) -> StampCheck {
    let payload = annotations.get(REQUESTER_ANNOTATION);
    let sig = annotations.get(SIGNATURE_ANNOTATION);
    let (payload, sig) = match (payload, sig) {
        (None, None) => return StampCheck::Missing,
        (Some(_), None) => {
            return StampCheck::Invalid(format!(
                "annotation {REQUESTER_ANNOTATION} is not signed (no {SIGNATURE_ANNOTATION})"
            ));
        }
        (None, Some(_)) => {
            return StampCheck::Invalid(format!(
                "annotation {SIGNATURE_ANNOTATION} is present without {REQUESTER_ANNOTATION}"
            ));
        }
        (Some(p), Some(s)) => (p, s),
    };
    let expected = key.tag(namespace, payload);
    if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        return StampCheck::Invalid(
            "the requester stamp's signature does not match (forged, altered, or signed by another key)"
                .into(),
        );
    }
    let stamp: Stamp = match serde_json::from_str(payload) {
        Ok(s) => s,
        Err(e) => return StampCheck::Invalid(format!("the requester stamp cannot be read: {e}")),
    };
    let name_ok = stamp.name == name
        || stamp
            .name
            .strip_prefix("generateName:")
            .is_some_and(|prefix| !prefix.is_empty() && name.starts_with(prefix));
    if !name_ok {
        return StampCheck::Invalid(format!(
            "the requester stamp was made for object {:?}, not {name:?} (copied from another grant)",
            stamp.name
        ));
    }
    if stamp.spec != spec_digest(spec) {
        return StampCheck::Invalid(
            "the spec changed after the requester stamp was made (the admission webhook did not see the change)"
                .into(),
        );
    }
    match (&stamp.uid, instance.uid) {
        (Some(made_for), Some(uid)) if made_for != uid => {
            return StampCheck::Invalid(format!(
                "the requester stamp was made for another object named {name:?} (uid {made_for}, this one is {uid}): it was copied onto a re-created grant"
            ));
        }
        (None, _) => {
            if let Some(created) = instance.created
                && stamp.at < created - CREATE_WINDOW
            {
                return StampCheck::Invalid(format!(
                    "the requester stamp ({}) is older than the object (created {}): it was copied from an earlier grant of that name",
                    stamp.at.format("%Y-%m-%dT%H:%M:%SZ"),
                    created.format("%Y-%m-%dT%H:%M:%SZ")
                ));
            }
        }
        _ => {}
    }
    StampCheck::Valid(stamp)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// GitOps provenance from an object's labels and annotations: Argo CD (`tracking-id`
/// annotation or `argocd.argoproj.io/instance` label) or Flux (kustomize-controller and
/// helm-controller owner labels). The revision comes from `accessgrant.io/source-revision`
/// when a pipeline sets it.
pub fn provenance(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<Provenance> {
    let revision = annotations
        .get(SOURCE_REVISION_ANNOTATION)
        .map(|r| r.chars().take(200).collect::<String>())
        .filter(|r| !r.is_empty());
    let clip = |s: &str| s.chars().take(253).collect::<String>();
    if let Some(t) = annotations.get("argocd.argoproj.io/tracking-id") {
        // `<app>:<group>/<kind>:<namespace>/<name>`
        let app = t.split(':').next().unwrap_or_default();
        return Some(Provenance {
            tool: "ArgoCD".into(),
            application: Some(clip(app)).filter(|a| !a.is_empty()),
            revision,
        });
    }
    if let Some(app) = labels.get("argocd.argoproj.io/instance") {
        return Some(Provenance {
            tool: "ArgoCD".into(),
            application: Some(clip(app)).filter(|a| !a.is_empty()),
            revision,
        });
    }
    for (kind, prefix) in [
        ("Kustomization", "kustomize.toolkit.fluxcd.io"),
        ("HelmRelease", "helm.toolkit.fluxcd.io"),
    ] {
        if let Some(name) = labels.get(&format!("{prefix}/name")) {
            let ns = labels
                .get(&format!("{prefix}/namespace"))
                .cloned()
                .unwrap_or_default();
            return Some(Provenance {
                tool: "Flux".into(),
                application: Some(clip(&format!("{kind} {ns}/{name}"))),
                revision,
            });
        }
    }
    None
}

/// The stamp the webhook makes for a request on an object with this metadata and spec.
pub fn make_stamp(
    user: &str,
    groups: &[String],
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &AccessGrantSpec,
    now: DateTime<Utc>,
) -> Stamp {
    let name = match meta.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!(
            "generateName:{}",
            meta.generate_name.as_deref().unwrap_or_default()
        ),
    };
    let empty = BTreeMap::new();
    Stamp {
        user: user.to_string(),
        groups: groups.to_vec(),
        at: now,
        name,
        spec: spec_digest(spec),
        provenance: provenance(
            meta.labels.as_ref().unwrap_or(&empty),
            meta.annotations.as_ref().unwrap_or(&empty),
        ),
        uid: meta.uid.clone().filter(|u| !u.is_empty()),
    }
}

/// The requester of an object as the controller sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verified {
    /// For `status.requester` (valid stamp only).
    pub status: Option<crate::api::RequesterStatus>,
    /// For the guard (valid stamp only).
    pub requester: Option<crate::guard::Requester>,
    /// Why a present stamp was not trusted.
    pub problem: Option<String>,
}

/// Checks an AccessGrant's stamp. Without a key (webhook not configured) a present stamp
/// cannot be trusted.
pub fn check_grant(key: Option<&StampKey>, g: &crate::api::AccessGrant) -> Verified {
    let empty = BTreeMap::new();
    let annotations = g.metadata.annotations.as_ref().unwrap_or(&empty);
    let ns = g.metadata.namespace.as_deref().unwrap_or_default();
    let name = g.metadata.name.as_deref().unwrap_or_default();
    let check = match key {
        Some(k) => verify_instance(
            k,
            ns,
            name,
            Instance::of(&g.metadata),
            &g.spec,
            annotations,
        ),
        None if annotations.contains_key(REQUESTER_ANNOTATION)
            || annotations.contains_key(SIGNATURE_ANNOTATION) =>
        {
            StampCheck::Invalid(
                "the operator has no stamp key (admission webhook disabled), so the stamp cannot be verified".into(),
            )
        }
        None => StampCheck::Missing,
    };
    match check {
        StampCheck::Missing => Verified::default(),
        StampCheck::Invalid(p) => Verified {
            problem: Some(p),
            ..Default::default()
        },
        StampCheck::Valid(s) => Verified {
            requester: Some(crate::guard::Requester {
                username: s.user.clone(),
                groups: s.groups.clone(),
            }),
            status: Some(crate::api::RequesterStatus {
                username: s.user,
                groups: s.groups,
                stamped_at: s.at,
                provenance: s.provenance,
            }),
            problem: None,
        },
    }
}
