//! What the controller's grant cache keeps of an AccessGrant.
//!
//! The cache holds one object per grant for as long as the grant exists, so its size is the
//! operator's memory per grant. The full `AccessGrant` is 1,880 bytes inline (an `ObjectMeta`,
//! the spec and a status struct with every field) before any of its strings; what the cache is
//! used for needs far less:
//! - the controller's triggers: name, namespace, generation, deletion (metadata), and a
//!   finalizer removed by someone else (`unguarded`);
//! - the phase gauge: the phase;
//! - the start-up reads (`warm`): whether the grant is Active and its target's subscription;
//! - the removal lane (`turns`): whether the grant is suspended.
//!
//! Every reconcile reads the whole object fresh with one GET, and the access index
//! (`coverage`) is fed from the full objects before they are made lean, so nothing else reads
//! the cache. Measured with `benches/load.rs`: BENCHMARKS.md.

use crate::api::{AccessGrant, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A cached grant: its metadata (without managedFields, annotations, labels, finalizers and
/// owner references), its phase, and the subscription of its target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeanGrant {
    /// Metadata, lean.
    pub metadata: ObjectMeta,
    /// `status.phase` (None: no status yet, or the object could not be read).
    pub phase: Option<Phase>,
    /// The JIT target's subscription (`spec.jit.subscriptionId`), lower-case.
    pub jit_subscription: Option<String>,
    /// The PIM target's subscription (from `spec.pim.scope`), lower-case.
    pub pim_subscription: Option<String>,
    /// The object does not match our types (its reconcile says so in its status).
    pub unreadable: bool,
    /// `spec.suspend` is true.
    pub suspended: bool,
    /// What the spec asks for: `JIT`, `PIM`, or `Invalid` (neither or both; the metrics label).
    #[serde(skip)]
    pub kind: &'static str,
    /// Since when (Unix seconds) the grant's access is to be taken away: its deletion, or its
    /// last move to `Revoking` (the metric of the oldest removal still waiting).
    #[serde(skip)]
    pub removal_since: Option<i64>,
    /// Our finalizer is missing although the phase says access may exist (someone removed
    /// it): a trigger, so that the controller puts it back at once.
    pub unguarded: bool,
}

impl LeanGrant {
    /// The grant is being deleted, or is suspended while it may still hold access: its passes
    /// take access away, and go in the removal lane (see `turns`).
    pub fn takes_access_away(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
            || (self.suspended && !self.phase.is_some_and(Phase::is_terminal))
    }
}

impl kube::Resource for LeanGrant {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <AccessGrant as kube::Resource>::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        <AccessGrant as kube::Resource>::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        <AccessGrant as kube::Resource>::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <AccessGrant as kube::Resource>::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn lean_meta(mut m: ObjectMeta) -> ObjectMeta {
    m.managed_fields = None;
    m.annotations = None;
    m.labels = None;
    m.finalizers = None;
    m.owner_references = None;
    m
}

impl From<DeserializeGuard<AccessGrant>> for LeanGrant {
    fn from(g: DeserializeGuard<AccessGrant>) -> Self {
        match g.0 {
            Ok(g) => LeanGrant {
                unguarded: g.metadata.deletion_timestamp.is_none()
                    && !g
                        .finalizers()
                        .iter()
                        .any(|f| f == crate::constants::FINALIZER)
                    && g.status
                        .as_ref()
                        .is_some_and(crate::api::AccessGrantStatus::may_hold_access),
                phase: g.status.as_ref().map(|s| s.phase),
                jit_subscription: g
                    .spec
                    .jit
                    .as_ref()
                    .map(|j| j.subscription_id.to_ascii_lowercase()),
                pim_subscription: g
                    .spec
                    .pim
                    .as_ref()
                    .and_then(|p| super::warm::subscription_of_scope(&p.scope)),
                suspended: g.spec.suspend == Some(true),
                removal_since: match (&g.metadata.deletion_timestamp, &g.status) {
                    (Some(t), _) => Some(t.0.as_second()),
                    (None, Some(st)) if st.phase == crate::api::Phase::Revoking => st
                        .history
                        .iter()
                        .rev()
                        .find(|h| h.event == "Revoking")
                        .map(|h| h.time.timestamp()),
                    _ => None,
                },
                kind: match (&g.spec.jit, &g.spec.pim) {
                    (Some(_), None) => "JIT",
                    (None, Some(_)) => "PIM",
                    _ => "Invalid",
                },
                metadata: lean_meta(g.metadata),
                unreadable: false,
            },
            // Unreadable: kept by name so the reconcile can say so in its status.
            Err(bad) => LeanGrant {
                metadata: lean_meta(bad.metadata),
                unreadable: true,
                ..Default::default()
            },
        }
    }
}

/// A watch event of full objects as one of lean objects.
pub fn lean_event(ev: watcher::Event<DeserializeGuard<AccessGrant>>) -> watcher::Event<LeanGrant> {
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(o.into()),
        watcher::Event::Delete(o) => watcher::Event::Delete(o.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(o.into()),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lean_grant_is_a_fraction_of_the_object_and_keeps_what_the_cache_serves() {
        assert!(
            std::mem::size_of::<LeanGrant>() * 3 < std::mem::size_of::<AccessGrant>(),
            "{} vs {}",
            std::mem::size_of::<LeanGrant>(),
            std::mem::size_of::<AccessGrant>()
        );
        let g: AccessGrant = serde_json::from_value(serde_json::json!({
            "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
            "metadata": {"name": "g", "namespace": "ns", "generation": 3,
                "finalizers": ["accessgrant.io/revoke"], "annotations": {"a": "b"},
                "managedFields": [{"manager": "x"}]},
            "spec": {"duration": "PT1H", "pim": {"mode": "Activate",
                "scope": "/subscriptions/5F1E7A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B/resourceGroups/rg",
                "roleDefinitionId": "/subscriptions/5F1E7A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7",
                "principalId": "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e01"}},
            "status": {"phase": "Active"}
        }))
        .expect("grant");
        let lean = LeanGrant::from(DeserializeGuard(Ok(g)));
        assert_eq!(lean.metadata.name.as_deref(), Some("g"));
        assert_eq!(lean.metadata.generation, Some(3));
        assert!(lean.metadata.managed_fields.is_none() && lean.metadata.annotations.is_none());
        assert_eq!(lean.phase, Some(Phase::Active));
        assert_eq!(
            lean.pim_subscription.as_deref(),
            Some("5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(lean.jit_subscription, None);
    }

    #[test]
    fn deleted_grants_and_suspended_live_ones_take_access_away() {
        let grant = |deleting: bool, suspend: Option<bool>, phase: &str| {
            let mut meta = serde_json::json!({"name": "g", "namespace": "ns"});
            if deleting {
                meta["deletionTimestamp"] = "2026-12-01T10:00:00Z".into();
            }
            let g: AccessGrant = serde_json::from_value(serde_json::json!({
                "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant",
                "metadata": meta,
                "spec": {"duration": "PT1H", "suspend": suspend, "pim": {"mode": "Activate",
                    "scope": "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
                    "roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7",
                    "principalId": "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e01"}},
                "status": {"phase": phase}
            }))
            .expect("grant");
            LeanGrant::from(DeserializeGuard(Ok(g))).takes_access_away()
        };
        assert!(grant(true, None, "Active"));
        assert!(grant(true, None, "Expired"), "a deletion is always prompt");
        assert!(grant(false, Some(true), "Active"));
        assert!(grant(false, Some(true), "Requesting"));
        assert!(!grant(false, Some(true), "Revoked"), "suspended and closed");
        assert!(!grant(false, Some(false), "Active"));
        assert!(!grant(false, None, "Pending"));
    }
}
