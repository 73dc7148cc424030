//! Shared helpers of the kube-sim tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use accessgrant_sim::kube::{RunningSim, SimConfig, serve};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube")
}

pub async fn start_with(f: impl FnOnce(&mut SimConfig)) -> RunningSim {
    let mut cfg = SimConfig {
        crds_dir: Some(fixtures()),
        ..SimConfig::default()
    };
    f(&mut cfg);
    serve(cfg).await.expect("kube-sim starts")
}

pub async fn start() -> (RunningSim, Client) {
    let sim = start_with(|_| {}).await;
    let client = sim.client().await.expect("client");
    (sim, client)
}

pub fn widget_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.kube-sim.io", "v1", "Widget"),
        "widgets",
    )
}

pub fn widgets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &widget_ar())
}

pub fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.kube-sim.io/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("widget")
}

/// The Status of a failed API call.
pub fn api_err<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `f` until it returns Some, or panics after `secs`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A raw request through the kube client (path relative to the server), returning the body.
pub async fn raw(client: &Client, method: &str, path: &str, accept: Option<&str>) -> Value {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(a) = accept {
        b = b.header("accept", a);
    }
    let req = b.body(vec![]).expect("request");
    client.request::<Value>(req).await.expect("raw request")
}

/// Grants `rules` cluster-wide to a subject (`User`, `Group` or `ServiceAccount` NS/NAME)
/// through a ClusterRole and ClusterRoleBinding both called `name`, as the admin.
pub async fn grant(admin: &Client, name: &str, subject: Value, rules: Value) {
    let pp = kube::api::PostParams::default();
    let cr: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).expect("role");
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .create(&pp, &cr)
        .await
        .expect("ClusterRole created");
    let crb: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [subject],
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(&pp, &crb)
        .await
        .expect("ClusterRoleBinding created");
}
