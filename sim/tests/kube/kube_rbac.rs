//! kube-sim's RBAC: requests allowed and refused by verb, resource, subresource, name and
//! namespace; ClusterRole aggregation; ServiceAccount tokens as `system:serviceaccount:NS:NAME`
//! with their groups; impersonation of a ServiceAccount; SubjectAccessReview and
//! SelfSubjectRulesReview.

use crate::kube_common;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_common::*;
use serde_json::{Value, json};

async fn post(client: &Client, path: &str, body: Value) -> Value {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    client.request(req).await.expect("review")
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

async fn namespace(admin: &Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// A client holding a ServiceAccount's own token (TokenRequest, as a pod's projected token).
async fn sa_client(
    sim: &accessgrant_sim::kube::RunningSim,
    admin: &Client,
    ns: &str,
    name: &str,
) -> Client {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": name}, "spec": {"expirationSeconds": 3600}
    }))
    .unwrap();
    let out: TokenRequest = sas
        .create_subresource("token", name, &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = out.status.unwrap().token.unwrap_or_default();
    Client::try_from(sim.kube_config_for(Some(&token)).await.unwrap()).unwrap()
}

#[tokio::test]
async fn verbs_resources_subresources_names_and_namespaces() {
    let (sim, admin) = start().await;
    namespace(&admin, "team-a").await;
    namespace(&admin, "team-b").await;
    let app = sa_client(&sim, &admin, "team-a", "app").await;

    // The ServiceAccount's identity and groups.
    let who = post(
        &app,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        json!({}),
    )
    .await;
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:team-a:app"
    );
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team-a",
            "system:authenticated"
        ])
    );

    // Nothing bound: refused, with the API server's message.
    let cms: Api<ConfigMap> = Api::namespaced(app.clone(), "team-a");
    let e = api_err(cms.list(&Default::default()).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "configmaps is forbidden: User \"system:serviceaccount:team-a:app\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team-a\""
    );

    // A Role in team-a, bound to the ServiceAccount (namespace taken from the binding).
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "cm-writer", "namespace": "team-a"},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "patch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["deletable"], "verbs": ["delete"]}
        ]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let rb: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "app-cm", "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "app"}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    for n in ["keep", "deletable"] {
        cms.create(&PostParams::default(), &cm(n))
            .await
            .expect("create allowed");
    }
    assert_eq!(cms.list(&Default::default()).await.unwrap().items.len(), 2);
    cms.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .expect("patch allowed");
    let e = api_err(
        cms.replace("keep", &PostParams::default(), &cm("keep"))
            .await,
    );
    assert_eq!(e.code, 403, "update is another verb: {}", e.message);
    let e = api_err(cms.delete("keep", &Default::default()).await);
    assert!(
        e.message.contains("cannot delete resource \"configmaps\""),
        "{}",
        e.message
    );
    cms.delete("deletable", &Default::default())
        .await
        .expect("named delete allowed");
    // The same verbs in another namespace, and across all namespaces: refused.
    let e = api_err(
        Api::<ConfigMap>::namespaced(app.clone(), "team-b")
            .list(&Default::default())
            .await,
    );
    assert!(
        e.message.ends_with("in the namespace \"team-b\""),
        "{}",
        e.message
    );
    let e = api_err(
        Api::<ConfigMap>::all(app.clone())
            .list(&Default::default())
            .await,
    );
    assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);

    // Subresources: the widget's status needs its own rule.
    grant(
        &admin,
        "widget-main",
        json!({"kind": "ServiceAccount", "name": "app", "namespace": "team-a"}),
        json!([{"apiGroups": ["test.kube-sim.io"], "resources": ["widgets"], "verbs": ["create", "get", "patch"]}]),
    )
    .await;
    let w = widgets(&app, "team-a");
    w.create(
        &PostParams::default(),
        &widget("w1", json!({"color": "red"})),
    )
    .await
    .expect("create widget");
    let e = api_err(
        w.patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Done"}})),
        )
        .await,
    );
    assert_eq!(
        e.message,
        "widgets.test.kube-sim.io \"w1\" is forbidden: User \"system:serviceaccount:team-a:app\" cannot patch resource \"widgets/status\" in API group \"test.kube-sim.io\" in the namespace \"team-a\""
    );
    grant(
        &admin,
        "widget-status",
        json!({"kind": "ServiceAccount", "name": "app", "namespace": "team-a"}),
        json!([{"apiGroups": ["test.kube-sim.io"], "resources": ["widgets/status"], "verbs": ["patch"]}]),
    )
    .await;
    w.patch_status(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Done"}})),
    )
    .await
    .expect("status patch allowed by its own rule");

    // Impersonating the ServiceAccount: refused for the SA itself, allowed for the admin.
    let req = http::Request::get("/api/v1/namespaces/team-a/configmaps")
        .header("impersonate-user", "system:serviceaccount:team-a:other")
        .body(vec![])
        .unwrap();
    let e = api_err(app.request::<Value>(req).await);
    assert_eq!(
        e.message,
        "serviceaccounts \"other\" is forbidden: User \"system:serviceaccount:team-a:app\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"team-a\""
    );
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("content-type", "application/json")
        .header("impersonate-user", "system:serviceaccount:team-a:app")
        .body(b"{}".to_vec())
        .unwrap();
    let v: Value = admin.request(req).await.unwrap();
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team-a",
            "system:authenticated"
        ]),
        "an impersonated ServiceAccount gets its groups"
    );
}

#[tokio::test]
async fn aggregation_and_access_reviews() {
    let (_sim, admin) = start().await;
    namespace(&admin, "team-a").await;
    // An aggregated role, bound to bob in team-a, empty until a labelled role joins it.
    let aggregated: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "widget-team"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"example.com/aggregate-to-widget-team": "true"}}]},
        "rules": []
    }))
    .unwrap();
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone());
    roles
        .create(&PostParams::default(), &aggregated)
        .await
        .unwrap();
    let rb: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "bob-widgets", "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "widget-team"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let sar = |verb: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": "bob", "groups": ["devs"],
                        "resourceAttributes": {"verb": verb, "group": "test.kube-sim.io", "resource": "widgets", "namespace": ns}}})
    };
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    assert_eq!(
        post(&admin, path, sar("list", "team-a")).await["status"]["allowed"],
        false
    );

    let part: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "widget-reader", "labels": {"example.com/aggregate-to-widget-team": "true"}},
        "rules": [{"apiGroups": ["test.kube-sim.io"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &part).await.unwrap();
    assert_eq!(
        post(&admin, path, sar("list", "team-a")).await["status"]["allowed"],
        true
    );
    assert_eq!(
        post(&admin, path, sar("list", "default")).await["status"]["allowed"],
        false,
        "a RoleBinding of a ClusterRole grants in its namespace only"
    );
    assert_eq!(
        post(&admin, path, sar("delete", "team-a")).await["status"]["allowed"],
        false
    );
    // Unlabelled again: the aggregated role loses the rule.
    roles
        .patch(
            "widget-reader",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"example.com/aggregate-to-widget-team": null}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        post(&admin, path, sar("list", "team-a")).await["status"]["allowed"],
        false
    );

    // Only who may create subjectaccessreviews asks about others.
    grant(
        &admin,
        "bob-reads-widgets",
        json!({"kind": "User", "name": "bob"}),
        json!([{"apiGroups": ["test.kube-sim.io"], "resources": ["widgets"], "verbs": ["list"]}]),
    )
    .await;
    let mut cfg = _sim.kube_config().await.unwrap();
    cfg.auth_info.impersonate = Some("bob".into());
    let bob = Client::try_from(cfg).unwrap();
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&sar("list", "team-a")).unwrap())
        .unwrap();
    assert_eq!(api_err(bob.request::<Value>(req).await).code, 403);
    // Its own rules, though, anyone may review.
    let rules = post(
        &bob,
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "team-a"}}),
    )
    .await;
    let rr = rules["status"]["resourceRules"].as_array().unwrap();
    assert!(
        rr.iter()
            .any(|r| r["resources"] == json!(["widgets"]) && r["verbs"] == json!(["list"])),
        "{rules}"
    );
    assert_eq!(rules["status"]["incomplete"], false);
    let ssar = post(
        &bob,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        json!({"spec": {"resourceAttributes": {"verb": "list", "group": "test.kube-sim.io", "resource": "widgets", "namespace": "team-a"}}}),
    )
    .await;
    assert_eq!(ssar["status"]["allowed"], true);
    assert_eq!(ssar["kind"], "SelfSubjectAccessReview");
    let _ = widgets(&bob, "team-a")
        .list(&Default::default())
        .await
        .expect("bob lists widgets");
    assert!(roles.get("cluster-admin").await.unwrap().name_any() == "cluster-admin");
}
