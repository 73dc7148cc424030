//! Built-in kinds the operator touches, through kube's client: Events (kube-runtime's
//! Recorder; core/v1 and events.k8s.io/v1 views), Leases, Namespaces, Secrets,
//! ServiceAccount TokenRequest with OIDC discovery, bearer-token identities, tables, discovery.

use crate::kube_common;

use accessgrant_sim::kube::UserInfo;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, Namespace, ObjectReference, Secret, ServiceAccount,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use kube_common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn events_from_kube_runtime_recorder() {
    let (_sim, client) = start().await;
    let w = widgets(&client, "default")
        .create(&PostParams::default(), &widget("ev", json!({"size": 1})))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "accessgrant-operator".into(),
            instance: Some("pod-1".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("test.kube-sim.io/v1".into()),
        kind: Some("Widget".into()),
        name: w.metadata.name.clone(),
        namespace: Some("default".into()),
        uid: w.metadata.uid.clone(),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "Granted".into(),
        note: Some("access granted".into()),
        action: "Grant".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &reference)
        .await
        .expect("first publish creates");
    recorder
        .publish(&ev, &reference)
        .await
        .expect("second publish patches the series");

    // the same event through core/v1, selected by the involved object
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let list = core
        .list(&ListParams::default().fields("involvedObject.name=ev,involvedObject.kind=Widget"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.message.as_deref(), Some("access granted"));
    assert_eq!(e.reason.as_deref(), Some("Granted"));
    assert_eq!(
        e.reporting_component.as_deref(),
        Some("accessgrant-operator")
    );
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(Some(2)));

    // events.k8s.io/v1 validation: notes are limited to 1 KiB, reportingController is required
    let long = Event {
        type_: EventType::Normal,
        reason: "TooChatty".into(),
        note: Some("x".repeat(1025)),
        action: "Grant".into(),
        secondary: None,
    };
    let err = recorder
        .publish(&long, &reference)
        .await
        .expect_err("note too long");
    match err {
        kube::Error::Api(st) => {
            assert_eq!(st.code, 422);
            assert!(
                st.message
                    .contains("note: Too long: may not be more than 1024 bytes"),
                "{}",
                st.message
            );
        }
        other => panic!("{other:?}"),
    }

    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let l = v1
        .list(&ListParams::default().fields("regarding.name=ev"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(l.items[0].note.as_deref(), Some("access granted"));
}

#[tokio::test]
async fn leases_for_leader_election() {
    let (_sim, client) = start().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let l: Lease = serde_json::from_value(json!({
        "metadata": {"name": "accessgrant-operator"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                 "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &l).await.unwrap();
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    leases
        .replace("accessgrant-operator", &PostParams::default(), &taken)
        .await
        .unwrap();
    // the other candidate still holds the old version: conflict
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-c".into());
    let st = api_err(
        leases
            .replace("accessgrant-operator", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!(st.code, 409);
    let now = leases.get("accessgrant-operator").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("pod-b"));
}

#[tokio::test]
async fn namespaces_labels_and_cascading_deletion() {
    let (_sim, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "team-a", "labels": {"tier": "dev"}}}))
            .unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let dev = nss
        .list(&ListParams::default().labels("tier=dev"))
        .await
        .unwrap();
    assert_eq!(dev.items.len(), 1);
    let got = nss.get("team-a").await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(
        got.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "team-a"
    );

    let api = widgets(&client, "team-a");
    let mut w = widget("held", json!({"size": 1}));
    w.metadata.finalizers = Some(vec!["x/y".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    nss.delete("team-a", &DeleteParams::default())
        .await
        .unwrap();
    let t = nss.get("team-a").await.unwrap();
    assert_eq!(t.status.unwrap().phase.as_deref(), Some("Terminating"));
    let held = api.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    // creating in a terminating namespace is forbidden
    let st = api_err(
        api.create(&PostParams::default(), &widget("new", json!({"size": 1})))
            .await,
    );
    assert_eq!(st.code, 403);
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(nss.get("team-a").await).code, 404);
}

#[tokio::test]
async fn secrets_string_data() {
    let (_sim, client) = start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}),
    )
    .unwrap();
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert_eq!(s.data.unwrap()["password"].0, b"hunter2");
    assert!(s.string_data.is_none());
}

fn jwt_claims(token: &str) -> (Value, Value, Vec<u8>, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    (
        header,
        claims,
        B64URL.decode(parts[2]).unwrap(),
        format!("{}.{}", parts[0], parts[1]),
    )
}

#[tokio::test]
async fn service_account_token_request_and_oidc_discovery() {
    let (sim, client) = start().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "deployer"}})).unwrap();
    let sa = sas.create(&PostParams::default(), &sa).await.unwrap();
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": "deployer"},
        "spec": {"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 3600}
    }))
    .unwrap();
    let out: TokenRequest = sas
        .create_subresource("token", "deployer", &PostParams::default(), &tr)
        .await
        .expect("token request");
    let status = out.status.expect("status");
    let (header, claims, sig, signed) = jwt_claims(status.token.as_deref().unwrap());
    assert_eq!(header["alg"], "RS256");
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:default:deployer");
    assert_eq!(claims["aud"], json!(["api://AzureADTokenExchange"]));
    assert_eq!(claims["kubernetes.io"]["namespace"], "default");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        json!(sa.metadata.uid)
    );
    let exp = claims["exp"].as_i64().unwrap();
    assert_eq!(exp - claims["iat"].as_i64().unwrap(), 3600);
    assert!(claims["nbf"].is_i64());

    // OIDC discovery as kube-apiserver serves it; the JWK verifies the signature
    let oidc = raw(&client, "GET", "/.well-known/openid-configuration", None).await;
    assert_eq!(
        oidc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        oidc["jwks_uri"],
        format!("{}/openid/v1/jwks", sim.base_url())
    );
    let jwks = raw(&client, "GET", "/openid/v1/jwks", None).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], header["kid"]);
    let n = B64URL.decode(key["n"].as_str().unwrap()).unwrap();
    let e = B64URL.decode(key["e"].as_str().unwrap()).unwrap();
    let pk = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
    pk.verify(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        signed.as_bytes(),
        &sig,
    )
    .expect("signature verifies with the published JWK");

    // a missing ServiceAccount is 404
    let st = api_err(
        sas.create_subresource::<_, TokenRequest>("token", "nobody", &PostParams::default(), &tr)
            .await,
    );
    assert_eq!(st.code, 404);
    // too short an expiry is 422
    let mut short = tr.clone();
    short.spec.as_mut().unwrap().expiration_seconds = Some(60);
    let st = api_err(
        sas.create_subresource::<_, TokenRequest>(
            "token",
            "deployer",
            &PostParams::default(),
            &short,
        )
        .await,
    );
    assert_eq!(st.code, 422);

    // a token for the API audience authenticates as the ServiceAccount
    let mut api_tr = tr.clone();
    api_tr.spec.as_mut().unwrap().audiences = None;
    let t: TokenRequest = sas
        .create_subresource("token", "deployer", &PostParams::default(), &api_tr)
        .await
        .unwrap();
    let sa_client = Client::try_from(
        sim.kube_config_for(t.status.unwrap().token.as_deref())
            .await
            .unwrap(),
    )
    .unwrap();
    let who = whoami(&sa_client).await;
    assert_eq!(who["username"], "system:serviceaccount:default:deployer");
    assert!(
        who["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("system:serviceaccounts:default"))
    );
}

async fn whoami(client: &Client) -> Value {
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
            )
            .unwrap(),
        )
        .unwrap();
    let v: Value = client.request(req).await.expect("selfsubjectreview");
    v["status"]["userInfo"].clone()
}

#[tokio::test]
async fn bearer_tokens_map_to_users_and_groups() {
    let sim = start_with(|c| {
        c.tokens.push((
            "alice-token".into(),
            UserInfo::new("alice", &["devs", "oncall"]),
        ));
        c.allow_anonymous = false;
    })
    .await;
    let alice = Client::try_from(sim.kube_config_for(Some("alice-token")).await.unwrap()).unwrap();
    let who = whoami(&alice).await;
    assert_eq!(who["username"], "alice");
    assert_eq!(
        who["groups"],
        json!(["devs", "oncall", "system:authenticated"])
    );
    let admin = whoami(&sim.client().await.unwrap()).await;
    assert_eq!(admin["username"], "kube-sim-admin");

    // impersonation headers (kubectl --as/--as-group) set the acting user, for a user allowed
    // to impersonate: refused first, allowed once alice may impersonate bob and auditors
    let as_bob = || {
        http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header("content-type", "application/json")
            .header("impersonate-user", "bob")
            .header("impersonate-group", "auditors")
            .body(b"{}".to_vec())
            .unwrap()
    };
    let refused = api_err(alice.request::<Value>(as_bob()).await);
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    let admin_client = sim.client().await.unwrap();
    grant(
        &admin_client,
        "impersonate-bob",
        json!({"kind": "User", "name": "alice"}),
        json!([{"apiGroups": [""], "resources": ["users"], "resourceNames": ["bob"], "verbs": ["impersonate"]}]),
    )
    .await;
    let refused = api_err(alice.request::<Value>(as_bob()).await);
    assert!(
        refused
            .message
            .starts_with("groups \"auditors\" is forbidden"),
        "each group needs its own permission: {}",
        refused.message
    );
    grant(
        &admin_client,
        "impersonate-auditors",
        json!({"kind": "User", "name": "alice"}),
        json!([{"apiGroups": [""], "resources": ["groups"], "resourceNames": ["auditors"], "verbs": ["impersonate"]}]),
    )
    .await;
    let v: Value = alice.request(as_bob()).await.unwrap();
    assert_eq!(v["status"]["userInfo"]["username"], "bob");
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!(["auditors", "system:authenticated"])
    );

    // protobuf bodies are not understood: 415 like an apiserver without that codec
    let req = http::Request::post("/api/v1/namespaces")
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .body(vec![0x6b, 0x38, 0x73, 0x00])
        .unwrap();
    let r: Result<Value, _> = admin_client.request(req).await;
    assert_eq!(api_err(r).code, 415);

    let bad = Client::try_from(sim.kube_config_for(Some("wrong")).await.unwrap()).unwrap();
    let r: Result<Value, _> = bad
        .request(
            http::Request::get("/api/v1/namespaces")
                .body(vec![])
                .unwrap(),
        )
        .await;
    assert_eq!(api_err(r).code, 401);
}

#[tokio::test]
async fn tables_discovery_and_openapi() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    api.create(
        &PostParams::default(),
        &widget("t1", json!({"color": "red", "size": 3})),
    )
    .await
    .unwrap();
    let table = raw(
        &client,
        "GET",
        "/apis/test.kube-sim.io/v1/namespaces/default/widgets",
        Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
    )
    .await;
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, vec!["Name", "Color", "Size", "Phase", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "t1");
    assert_eq!(cells[1], "red");
    assert_eq!(cells[2], 3);
    assert_eq!(cells[3], Value::Null);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    let groups = raw(&client, "GET", "/apis", None).await;
    assert!(
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "test.kube-sim.io")
    );
    let core = raw(&client, "GET", "/api/v1", None).await;
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "serviceaccounts/token")
    );
    let gv = raw(&client, "GET", "/apis/test.kube-sim.io/v1", None).await;
    let widgets_res = gv["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "widgets")
        .unwrap()
        .clone();
    assert_eq!(widgets_res["shortNames"], json!(["wd"]));
    assert!(
        gv["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "widgets/status")
    );

    let index = raw(&client, "GET", "/openapi/v3", None).await;
    let url = index["paths"]["apis/test.kube-sim.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = raw(&client, "GET", &url, None).await;
    let schema = &doc["components"]["schemas"]["io.kube-sim.test.v1.Widget"];
    assert_eq!(
        schema["properties"]["spec"]["properties"]["color"]["description"],
        "The colour of the widget."
    );
    assert_eq!(
        schema["x-kubernetes-group-version-kind"][0]["kind"],
        "Widget"
    );

    // Swagger 2.0 (kubectl < 1.27 reads it as protobuf; the encoding has unit tests)
    let v2 = raw(&client, "GET", "/openapi/v2", None).await;
    assert_eq!(v2["swagger"], "2.0");
    let w2 = &v2["definitions"]["io.kube-sim.test.v1.Widget"];
    assert_eq!(
        w2["properties"]["metadata"]["$ref"],
        "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    );
    assert_eq!(w2["properties"]["apiVersion"]["type"], "string");
}
