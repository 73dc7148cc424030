//! Server-side apply removes a map the manager owned when it stops applying it (not only the
//! map's leaves), as kube-apiserver does. The operator's status writes depend on it: an
//! `intent` it no longer sets must disappear, or the CRD's required fields reject the object.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use std::path::PathBuf;

#[tokio::test]
async fn apply_without_a_map_removes_the_map() {
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let sim = accessgrant_sim::kube::serve(accessgrant_sim::kube::SimConfig {
        crds_dir: Some(crds),
        ..Default::default()
    })
    .await
    .expect("kube-sim");
    let client = sim.client().await.expect("client");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("accessgrant.io", "v1alpha1", "AccessGrant"),
        "accessgrants",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let grant: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant", "metadata": {"name": "g"},
        "spec": {"duration": "PT1H", "pim": {"mode": "Activate", "scope": "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
            "roleDefinitionId": "/subscriptions/5f1e7a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "principalId": "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e01"}}
    }))
    .expect("object");
    api.create(&PostParams::default(), &grant)
        .await
        .expect("create");
    let pp = PatchParams::apply("accessgrant-operator").force();
    let with_intent = json!({"apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant", "metadata": {"name": "g"},
        "status": {"phase": "Requesting", "intent": {"operation": "SelfActivate", "attempt": 1, "requestId": "r", "recordedAt": "2026-11-23T09:00:00Z"}}});
    let o = api
        .patch_status("g", &pp, &Patch::Apply(&with_intent))
        .await
        .expect("apply with intent");
    assert_eq!(o.data["status"]["intent"]["attempt"], 1);
    let without = json!({"apiVersion": "accessgrant.io/v1alpha1", "kind": "AccessGrant", "metadata": {"name": "g"}, "status": {"phase": "Active"}});
    let o = api
        .patch_status("g", &pp, &Patch::Apply(&without))
        .await
        .expect("apply without intent");
    assert_eq!(o.data["status"]["phase"], "Active");
    assert!(
        o.data["status"].get("intent").is_none(),
        "intent left behind: {}",
        o.data["status"]
    );
}
