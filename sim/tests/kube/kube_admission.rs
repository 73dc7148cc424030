//! Admission webhooks: kube-sim sends AdmissionReview v1 (with the requester's userInfo) to
//! mutating then validating webhooks, applies JSON patches, and honours failurePolicy.

use crate::kube_common;

use std::sync::{Arc, Mutex};

use accessgrant_sim::kube::UserInfo;
use axum::Json;
use axum::routing::post;
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use kube_common::*;
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<Value>>>;

async fn webhook_server(seen: Seen) -> String {
    let s1 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/mutate",
            post(move |Json(review): Json<Value>| {
                let seen = s1.clone();
                async move {
                    let req = &review["request"];
                    seen.lock().unwrap().push(req.clone());
                    let mut patch = if req["object"]["metadata"]["labels"].is_object() {
                        json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "true"}])
                    } else {
                        json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "true"}}])
                    };
                    // status set by a webhook through the main endpoint is dropped afterwards
                    if let Some(p) = patch.as_array_mut() {
                        p.push(json!({"op": "add", "path": "/status", "value": {"phase": "FromWebhook"}}));
                    }
                    Json(json!({
                        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                        "response": {"uid": req["uid"], "allowed": true, "patchType": "JSONPatch",
                            "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())}
                    }))
                }
            }),
        )
        .route(
            "/validate",
            post(|Json(review): Json<Value>| async move {
                let req = &review["request"];
                let red = req["object"]["spec"]["color"] == "red";
                let mut response = json!({"uid": req["uid"], "allowed": !red});
                if red {
                    response["status"] = json!({"code": 403, "reason": "Forbidden", "message": "red widgets are not allowed"});
                }
                Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn hook(name: &str, url: &str, resource: &str, failure: &str) -> Value {
    json!({
        "name": name,
        "clientConfig": {"url": url},
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["test.kube-sim.io"],
                   "apiVersions": ["v1"], "resources": [resource]}],
        "failurePolicy": failure,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    })
}

#[tokio::test]
async fn mutating_then_validating_webhooks_with_user_info() {
    let sim = start_with(|c| {
        c.tokens
            .push(("alice-token".into(), UserInfo::new("alice", &["devs"])))
    })
    .await;
    let admin = sim.client().await.unwrap();
    let seen: Seen = Arc::default();
    let base = webhook_server(seen.clone()).await;

    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "label-widgets"},
        "webhooks": [hook("label.test.kube-sim.io", &format!("{base}/mutate"), "widgets", "Fail")]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .unwrap();
    let mut deny_hook = hook(
        "deny-red.test.kube-sim.io",
        &format!("{base}/validate"),
        "widgets",
        "Fail",
    );
    // CEL matchConditions: objects labelled skip=true never reach this webhook
    deny_hook["matchConditions"] = json!([{"name": "not-skipped",
        "expression": "!has(object.metadata.labels) || !('skip' in object.metadata.labels) || object.metadata.labels['skip'] != 'true'"}]);
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "deny-red"},
        "webhooks": [deny_hook]
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();

    grant(
        &admin,
        "widget-editor",
        json!({"kind": "User", "name": "alice"}),
        json!([{"apiGroups": ["test.kube-sim.io"], "resources": ["widgets"], "verbs": ["*"]}]),
    )
    .await;
    let alice = Client::try_from(sim.kube_config_for(Some("alice-token")).await.unwrap()).unwrap();
    let api = widgets(&alice, "default");
    let w = api
        .create(
            &PostParams::default(),
            &widget("blue", json!({"color": "blue"})),
        )
        .await
        .expect("allowed");
    assert_eq!(
        w.metadata.labels.unwrap()["mutated"],
        "true",
        "mutating webhook patched"
    );
    assert!(
        w.data.get("status").is_none(),
        "status from a webhook is dropped on create"
    );
    assert!(w.metadata.uid.is_some());
    {
        let seen = seen.lock().unwrap();
        let req = &seen[0];
        assert_eq!(req["operation"], "CREATE");
        assert_eq!(req["userInfo"]["username"], "alice");
        assert!(
            req["userInfo"]["groups"]
                .as_array()
                .unwrap()
                .contains(&json!("devs"))
        );
        assert_eq!(req["resource"]["resource"], "widgets");
        assert_eq!(req["namespace"], "default");
        assert!(
            req["object"]["metadata"]["uid"].is_null(),
            "mutating webhooks see the object before the server's fields"
        );
    }

    let st = api_err(
        api.create(
            &PostParams::default(),
            &widget("red", json!({"color": "red"})),
        )
        .await,
    );
    assert_eq!(st.code, 403);
    assert_eq!(
        st.message,
        "admission webhook \"deny-red.test.kube-sim.io\" denied the request: red widgets are not allowed"
    );
    assert_eq!(api_err(api.get("red").await).code, 404);

    // matchConditions false: the validating webhook is not called, red passes
    let mut skipped = widget("red-skipped", json!({"color": "red"}));
    skipped.metadata.labels = Some([("skip".to_string(), "true".to_string())].into());
    api.create(&PostParams::default(), &skipped)
        .await
        .expect("webhook skipped by matchConditions");
}

#[tokio::test]
async fn failure_policy_ignore_and_fail() {
    let (_sim, client) = start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/validate");
    let vwcs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let cfg = |failure: &str| -> ValidatingWebhookConfiguration {
        serde_json::from_value(json!({
            "metadata": {"name": format!("down-{}", failure.to_lowercase())},
            "webhooks": [hook(&format!("down-{}.test.kube-sim.io", failure.to_lowercase()), &url, "gadgets", failure)]
        }))
        .unwrap()
    };
    vwcs.create(&PostParams::default(), &cfg("Ignore"))
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.kube-sim.io", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let g = |name: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Gadget", "metadata": {"name": name}}))
            .unwrap()
    };
    gadgets
        .create(&PostParams::default(), &g("ignored"))
        .await
        .expect("Ignore lets it through");

    vwcs.create(&PostParams::default(), &cfg("Fail"))
        .await
        .unwrap();
    let st = api_err(gadgets.create(&PostParams::default(), &g("failed")).await);
    assert_eq!((st.code, st.reason.as_str()), (500, "InternalError"));
    assert!(
        st.message
            .contains("failed calling webhook \"down-fail.test.kube-sim.io\""),
        "{}",
        st.message
    );
}

/// An HTTPS webhook (self-signed certificate, trusted through `caBundle`), as the operator
/// serves its own.
#[tokio::test]
async fn https_webhook_trusted_through_ca_bundle() {
    use std::sync::Arc as StdArc;
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let cert_pem = ck.cert.pem();
    let cert_der = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(StdArc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert_der], key_der)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(StdArc::new(tls));
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/validate",
        post(move |Json(review): Json<Value>| {
            let seen = s2.clone();
            async move {
                seen.lock().unwrap().push(review["request"].clone());
                Json(
                    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": review["request"]["uid"], "allowed": false,
                                 "status": {"message": "checked over TLS"}}}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    let (_sim, client) = start().await;
    let mut h = hook(
        "tls.test.kube-sim.io",
        &format!("https://{addr}/validate"),
        "gadgets",
        "Fail",
    );
    h["clientConfig"]["caBundle"] =
        json!(base64::engine::general_purpose::STANDARD.encode(cert_pem));
    let vwc: ValidatingWebhookConfiguration =
        serde_json::from_value(json!({"metadata": {"name": "tls"}, "webhooks": [h]})).unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .unwrap();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.kube-sim.io", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let g: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Gadget", "metadata": {"name": "tls"}}),
    )
    .unwrap();
    let st = api_err(gadgets.create(&PostParams::default(), &g).await);
    assert_eq!(st.code, 400);
    assert_eq!(
        st.message,
        "admission webhook \"tls.test.kube-sim.io\" denied the request: checked over TLS"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}
