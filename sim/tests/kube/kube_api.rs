//! kube-sim CRUD semantics through kube's real client: conflicts, generation, status
//! subresource, finalizers, patches, server-side apply, validation (schema and CEL).

use crate::kube_common;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_common::*;
use serde_json::json;

#[tokio::test]
async fn create_get_conflicts_and_generation() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    let w = api
        .create(
            &PostParams::default(),
            &widget("w1", json!({"color": "red"})),
        )
        .await
        .expect("create");
    let md = &w.metadata;
    assert!(md.uid.is_some() && md.creation_timestamp.is_some());
    assert_eq!(md.generation, Some(1));
    let rv1: u64 = md.resource_version.clone().unwrap().parse().unwrap();

    let st = api_err(
        api.create(
            &PostParams::default(),
            &widget("w1", json!({"color": "red"})),
        )
        .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(st.message, "widgets.test.kube-sim.io \"w1\" already exists");

    // spec change: generation moves, resourceVersion grows
    let mut w2 = w.clone();
    w2.data["spec"]["color"] = json!("blue");
    let w2 = api
        .replace("w1", &PostParams::default(), &w2)
        .await
        .expect("replace");
    assert_eq!(w2.metadata.generation, Some(2));
    let rv2: u64 = w2
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);

    // stale resourceVersion: 409 Conflict
    let st = api_err(api.replace("w1", &PostParams::default(), &w).await);
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    assert!(
        st.message.contains("the object has been modified"),
        "{}",
        st.message
    );

    // metadata-only change: generation stays
    let p = Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}}));
    let w3 = api
        .patch("w1", &PatchParams::default(), &p)
        .await
        .expect("label patch");
    assert_eq!(w3.metadata.generation, Some(2));
    assert_eq!(w3.metadata.labels.unwrap()["team"], "a");

    // a no-op patch does not write
    let w4 = api
        .patch("w1", &PatchParams::default(), &p)
        .await
        .expect("noop patch");
    assert_eq!(w4.metadata.resource_version, w3.metadata.resource_version);

    let st = api_err(api.get("nope").await);
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(st.message, "widgets.test.kube-sim.io \"nope\" not found");

    // unknown namespace
    let other = widgets(&client, "missing");
    let st = api_err(
        other
            .create(&PostParams::default(), &widget("w1", json!({"size": 1})))
            .await,
    );
    assert_eq!(st.code, 404);
    assert_eq!(st.message, "namespaces \"missing\" not found");
}

#[tokio::test]
async fn status_subresource_is_separate() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    let mut w = widget("s1", json!({"color": "red"}));
    w.data["status"] = json!({"phase": "Ignored"});
    let w = api
        .create(&PostParams::default(), &w)
        .await
        .expect("create");
    assert!(w.data.get("status").is_none(), "create drops status");

    let p = Patch::Merge(json!({"spec": {"color": "green"}, "status": {"phase": "Ready"}}));
    let w = api
        .patch_status("s1", &PatchParams::default(), &p)
        .await
        .expect("status patch");
    assert_eq!(w.data["status"]["phase"], "Ready");
    assert_eq!(w.data["spec"]["color"], "red", "/status ignores spec");
    assert_eq!(
        w.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    let p = Patch::Merge(json!({"spec": {"color": "blue"}, "status": {"phase": "Hacked"}}));
    let w = api
        .patch("s1", &PatchParams::default(), &p)
        .await
        .expect("main patch");
    assert_eq!(w.data["spec"]["color"], "blue");
    assert_eq!(
        w.data["status"]["phase"], "Ready",
        "main endpoint ignores status"
    );
    assert_eq!(w.metadata.generation, Some(2));

    let got = api.get_status("s1").await.expect("get status");
    assert_eq!(got.data["status"]["phase"], "Ready");
}

#[tokio::test]
async fn finalizers_keep_object_until_removed() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    let mut w = widget("f1", json!({"size": 3}));
    w.metadata.finalizers = Some(vec!["test.kube-sim.io/cleanup".into()]);
    api.create(&PostParams::default(), &w)
        .await
        .expect("create");

    let res = api
        .delete("f1", &DeleteParams::default())
        .await
        .expect("delete");
    let pending = res.left().expect("object returned while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(
        pending.metadata.generation,
        Some(2),
        "deletion bumps generation"
    );
    let still = api.get("f1").await.expect("still there");
    assert!(still.metadata.deletion_timestamp.is_some());

    // adding a finalizer while deleting is forbidden
    let add = Patch::<()>::Json(
        serde_json::from_value(
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "other"}]),
        )
        .unwrap(),
    );
    let st = api_err(api.patch("f1", &PatchParams::default(), &add).await);
    assert_eq!(st.code, 422);

    // JSON patch with test: a wrong test fails with 422, the right one removes the finalizer
    let bad = Patch::<()>::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "wrong"},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ]))
        .unwrap(),
    );
    let st = api_err(api.patch("f1", &PatchParams::default(), &bad).await);
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    let good = Patch::<()>::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "test.kube-sim.io/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"}
        ]))
        .unwrap(),
    );
    api.patch("f1", &PatchParams::default(), &good)
        .await
        .expect("remove finalizer");
    let st = api_err(api.get("f1").await);
    assert_eq!(st.code, 404, "gone once the last finalizer is removed");

    // without finalizers, delete is immediate
    api.create(&PostParams::default(), &widget("f2", json!({"size": 1})))
        .await
        .expect("create");
    let res = api
        .delete("f2", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(res.left().is_some());
    assert_eq!(api_err(api.get("f2").await).code, 404);
}

#[tokio::test]
async fn server_side_apply_ownership_and_conflicts() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    let a = PatchParams::apply("manager-a");
    let applied = json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Widget",
        "metadata": {"name": "ssa", "labels": {"a": "1"}},
        "spec": {"color": "red", "tags": ["x"]}});
    let w = api
        .patch("ssa", &a, &Patch::Apply(&applied))
        .await
        .expect("apply creates");
    assert_eq!(w.data["spec"]["color"], "red");
    let mf = w.metadata.managed_fields.clone().expect("managedFields");
    assert_eq!(mf[0].manager.as_deref(), Some("manager-a"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));

    // another manager sets the same field to another value: conflict
    let b = PatchParams::apply("manager-b");
    let other = json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Widget",
        "metadata": {"name": "ssa"}, "spec": {"color": "blue"}});
    let st = api_err(api.patch("ssa", &b, &Patch::Apply(&other)).await);
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    assert!(
        st.message.contains("conflict with \"manager-a\"") && st.message.contains(".spec.color"),
        "{}",
        st.message
    );
    // same value: shared ownership, no conflict
    let same = json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Widget",
        "metadata": {"name": "ssa"}, "spec": {"color": "red", "size": 4}});
    let w = api
        .patch("ssa", &b, &Patch::Apply(&same))
        .await
        .expect("co-own");
    assert_eq!(w.data["spec"]["size"], 4);
    // force takes the field
    let w = api
        .patch("ssa", &b.clone().force(), &Patch::Apply(&other))
        .await
        .expect("forced apply");
    assert_eq!(w.data["spec"]["color"], "blue");
    assert_eq!(
        w.data["spec"]["tags"],
        json!(["x"]),
        "fields of manager-a stay"
    );
    assert!(
        w.data["spec"].get("size").is_none(),
        "manager-b dropped size from its config: {:?}",
        w.metadata.managed_fields
    );

    // manager-a re-applies without tags: its own field goes away
    let a2 = json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Widget",
        "metadata": {"name": "ssa", "labels": {"a": "1"}}, "spec": {}});
    let w = api
        .patch("ssa", &a, &Patch::Apply(&a2))
        .await
        .expect("re-apply");
    assert!(w.data["spec"].get("tags").is_none());
    assert_eq!(w.data["spec"]["color"], "blue");

    // status by server-side apply on /status, as the operator does
    let status = json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Widget",
        "metadata": {"name": "ssa"}, "spec": {"color": "green"}, "status": {"phase": "Active"}});
    let op = PatchParams::apply("operator").force();
    let w = api
        .patch_status("ssa", &op, &Patch::Apply(&status))
        .await
        .expect("status apply");
    assert_eq!(w.data["status"]["phase"], "Active");
    assert_eq!(w.data["spec"]["color"], "blue", "status apply ignores spec");
    let gen_before = w.metadata.generation;
    let w = api
        .patch_status("ssa", &op, &Patch::Apply(&status))
        .await
        .expect("idempotent");
    assert_eq!(w.metadata.generation, gen_before);
}

#[tokio::test]
async fn validation_schema_and_cel() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    // CEL rule on spec
    let st = api_err(
        api.create(&PostParams::default(), &widget("v1", json!({"tags": []})))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    assert!(
        st.message.contains("one of color or size must be set"),
        "{}",
        st.message
    );
    assert_eq!(
        st.message,
        "Widget.test.kube-sim.io \"v1\" is invalid: spec: Invalid value: \"object\": one of color or size must be set"
    );
    let details = st.details.expect("details");
    assert_eq!(details.causes[0].field, "spec");

    // schema: enum, maximum, pattern, maxItems
    let st = api_err(
        api.create(
            &PostParams::default(),
            &widget(
                "v2",
                json!({"color": "pink", "size": 11, "serial": "x", "tags": ["a", "b", "c", "d"]}),
            ),
        )
        .await,
    );
    assert_eq!(st.code, 422);
    for want in [
        "spec.color: Unsupported value: \"pink\"",
        "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
        "spec.serial: Invalid value: \"x\": spec.serial in body should match '^[A-Z]{2}-[0-9]+$'",
        "spec.tags: Too many: 4: must have at most 3 items",
    ] {
        assert!(
            st.message.contains(want),
            "missing {want:?} in {}",
            st.message
        );
    }
    // required nested field and type errors
    let st = api_err(
        api.create(
            &PostParams::default(),
            &widget("v3", json!({"size": "big", "owner": {}})),
        )
        .await,
    );
    assert!(
        st.message.contains("spec.owner.name: Required value"),
        "{}",
        st.message
    );
    assert!(
        st.message
            .contains("spec.size in body must be of type integer"),
        "{}",
        st.message
    );
    // blocking schema errors stop the CEL rules, as kube-apiserver says
    assert!(
        st.message.contains(
            "<nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid"
        ),
        "{}",
        st.message
    );

    // defaults and pruning of unknown fields
    let w = api
        .create(
            &PostParams::default(),
            &widget(
                "v4",
                json!({"size": 2, "serial": "AB-1", "owner": {"name": "me"}, "bogus": 1}),
            ),
        )
        .await
        .expect("valid widget");
    assert_eq!(w.data["spec"]["owner"]["team"], "platform");
    assert!(w.data["spec"].get("bogus").is_none());

    // transition rule with oldSelf
    let p = Patch::Merge(json!({"spec": {"serial": "CD-2"}}));
    let st = api_err(api.patch("v4", &PatchParams::default(), &p).await);
    assert_eq!(st.code, 422);
    assert!(
        st.message.contains("serial is immutable once set"),
        "{}",
        st.message
    );
    assert!(st.message.contains("Forbidden"), "{}", st.message);
    // other changes are fine
    let p = Patch::Merge(json!({"spec": {"size": 5}}));
    api.patch("v4", &PatchParams::default(), &p)
        .await
        .expect("size change allowed");

    // strict field validation
    let pp = PostParams::default();
    let mut strict = widget("v5", json!({"size": 1, "bogus": true}));
    strict.metadata.name = Some("v5".into());
    let req = kube::core::Request::new("/apis/test.kube-sim.io/v1/namespaces/default/widgets")
        .create(&pp, serde_json::to_vec(&strict).unwrap())
        .unwrap();
    let (parts, body) = req.into_parts();
    let mut uri = parts.uri.to_string();
    uri.push_str(if uri.contains('?') { "&" } else { "?" });
    uri.push_str("fieldValidation=Strict");
    let req = http::Request::post(uri)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let r = client.request::<serde_json::Value>(req).await;
    let st = api_err(r);
    assert_eq!(st.code, 400);
    assert!(
        st.message.contains("unknown field \"spec.bogus\""),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    for i in 0..5 {
        let mut w = widget(&format!("p{i}"), json!({"size": i + 1}));
        w.metadata.labels = Some(
            [(
                "parity".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into(),
        );
        api.create(&PostParams::default(), &w)
            .await
            .expect("create");
    }
    let mut names = vec![];
    let mut lp = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.expect("page");
        pages += 1;
        names.extend(page.items.iter().map(|o| o.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => {
                if pages == 1 {
                    assert_eq!(page.metadata.remaining_item_count, Some(3));
                }
                lp = lp.continue_token(&c);
            }
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, vec!["p0", "p1", "p2", "p3", "p4"]);

    let odd = api
        .list(&ListParams::default().labels("parity=odd"))
        .await
        .expect("labels");
    assert_eq!(odd.items.len(), 2);
    let notin = api
        .list(&ListParams::default().labels("parity notin (odd),parity"))
        .await
        .expect("set selector");
    assert_eq!(notin.items.len(), 3);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=p3"))
        .await
        .expect("fields");
    assert_eq!(by_name.items.len(), 1);
    let st = api_err(api.list(&ListParams::default().fields("spec.size=3")).await);
    assert_eq!(st.code, 400);

    // all-namespaces list sees them too
    let all: kube::Api<kube::api::DynamicObject> =
        kube::Api::all_with(client.clone(), &widget_ar());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        5
    );
}

#[tokio::test]
async fn cluster_scoped_custom_resources() {
    let (_sim, client) = start().await;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("test.kube-sim.io", "v1", "Gadget"),
        "gadgets",
    );
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    let g: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.kube-sim.io/v1", "kind": "Gadget",
        "metadata": {"name": "g1"}, "spec": {"anything": {"goes": true}}
    }))
    .unwrap();
    let g = api
        .create(&PostParams::default(), &g)
        .await
        .expect("create gadget");
    assert!(g.metadata.namespace.is_none());
    assert_eq!(
        g.data["spec"]["anything"]["goes"], true,
        "preserve-unknown-fields keeps data"
    );
    api.delete("g1", &DeleteParams::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn paging_across_namespaces_and_metadata_only_views() {
    let (_sim, client) = start().await;
    let nss: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    // "a-b" sorts before "a/" as a string but after "a" as a namespace: paging must not skip
    for ns in ["a", "a-b"] {
        let n = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        nss.create(&PostParams::default(), &n).await.unwrap();
        for name in ["x", "y"] {
            widgets(&client, ns)
                .create(&PostParams::default(), &widget(name, json!({"size": 1})))
                .await
                .unwrap();
        }
    }
    let all: kube::Api<kube::api::DynamicObject> =
        kube::Api::all_with(client.clone(), &widget_ar());
    let mut seen = vec![];
    let mut lp = ListParams::default().limit(1);
    loop {
        let page = all.list(&lp).await.unwrap();
        seen.extend(page.items.iter().map(|o| {
            format!(
                "{}/{}",
                o.metadata.namespace.clone().unwrap(),
                o.metadata.name.clone().unwrap()
            )
        }));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen, vec!["a/x", "a/y", "a-b/x", "a-b/y"]);

    // PartialObjectMetadata list and watch (kube-runtime's metadata_watcher)
    let meta = all.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items.len(), 4);
    assert!(meta.items.iter().all(|m| m.metadata.uid.is_some()));
    use futures::TryStreamExt;
    let meta_api: kube::Api<kube::core::PartialObjectMeta<kube::api::DynamicObject>> =
        kube::Api::namespaced_with(client.clone(), "a", &widget_ar());
    let mut mw = Box::pin(kube::runtime::watcher(
        meta_api,
        kube::runtime::watcher::Config::default(),
    ));
    let mut names = vec![];
    while let Some(ev) = tokio::time::timeout(std::time::Duration::from_secs(10), mw.try_next())
        .await
        .expect("in time")
        .expect("ok")
    {
        match ev {
            kube::runtime::watcher::Event::InitApply(m) => names.push(m.metadata.name.unwrap()),
            kube::runtime::watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, vec!["x", "y"]);
}

#[tokio::test]
async fn concurrent_writers_optimistic_concurrency() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    let base = api
        .create(
            &PostParams::default(),
            &widget("c", json!({"size": 1, "tags": []})),
        )
        .await
        .unwrap();
    // 20 concurrent PUTs from the same resourceVersion: exactly one wins
    let mut puts = vec![];
    for i in 0..20 {
        let api = api.clone();
        let mut w = base.clone();
        w.data["spec"]["color"] = json!(if i % 2 == 0 { "red" } else { "blue" });
        puts.push(tokio::spawn(async move {
            api.replace("c", &PostParams::default(), &w).await
        }));
    }
    let mut ok = 0;
    for p in puts {
        match p.await.unwrap() {
            Ok(_) => ok += 1,
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 1);
    // 20 concurrent merge patches (no resourceVersion): all apply, none is lost
    let mut patches = vec![];
    for i in 0..20 {
        let api = api.clone();
        patches.push(tokio::spawn(async move {
            let p = Patch::Merge(json!({"metadata": {"labels": {format!("l{i}"): "x"}}}));
            api.patch("c", &PatchParams::default(), &p).await
        }));
    }
    for p in patches {
        p.await.unwrap().expect("merge patches retry internally");
    }
    let w = api.get("c").await.unwrap();
    assert_eq!(w.metadata.labels.unwrap().len(), 20);
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "labels do not move generation"
    );
}

#[tokio::test]
async fn apply_manifests_helper() {
    // a sim without CRDs: the helper applies the CRDs first, then objects of their kinds
    let sim = accessgrant_sim::kube::serve(accessgrant_sim::kube::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("widget-sample.yaml"),
        dir.path().join("a-widget.yaml"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("widgets.yaml"),
        dir.path().join("b-crds.yaml"),
    )
    .unwrap();
    let applied = sim.apply_manifests(dir.path(), "sandbox").await.unwrap();
    assert_eq!(
        applied,
        vec![
            "CustomResourceDefinition/widgets.test.kube-sim.io",
            "CustomResourceDefinition/gadgets.test.kube-sim.io",
            "Widget/sample"
        ]
    );
    let client = sim.client().await.unwrap();
    let w = widgets(&client, "default").get("sample").await.unwrap();
    assert_eq!(w.data["spec"]["owner"]["team"], "platform");
    // idempotent
    sim.apply_manifests(dir.path(), "sandbox").await.unwrap();
}

#[tokio::test]
async fn deleting_a_crd_removes_its_objects_and_endpoints() {
    let (_sim, client) = start().await;
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("test.kube-sim.io", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    let g: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "test.kube-sim.io/v1", "kind": "Gadget", "metadata": {"name": "g1"}
    }))
    .unwrap();
    gadgets.create(&PostParams::default(), &g).await.unwrap();
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(client.clone());
    let crd = crds.get("gadgets.test.kube-sim.io").await.unwrap();
    let conds = crd.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    crds.delete("gadgets.test.kube-sim.io", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_err(crds.get("gadgets.test.kube-sim.io").await).code,
        404
    );
    let st = api_err(gadgets.list(&ListParams::default()).await);
    assert_eq!(st.code, 404, "the resource is no longer served");
    // serving it again starts empty
    let fixture = std::fs::read_to_string(fixtures().join("widgets.yaml")).unwrap();
    let doc = fixture.split("\n---\n").nth(1).unwrap();
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_norway::from_str(doc).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    assert!(
        gadgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn crd_with_a_broken_cel_rule_is_rejected() {
    let (_sim, client) = start().await;
    let crds: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(client.clone());
    let crd = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "things.test.kube-sim.io"},
        "spec": {"group": "test.kube-sim.io", "scope": "Namespaced",
            "names": {"plural": "things", "singular": "thing", "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "self.a ==", "message": "broken"}],
                    "properties": {"a": {"type": "string"}}}}}}}]}
    }))
    .unwrap();
    let st = api_err(crds.create(&PostParams::default(), &crd).await);
    assert_eq!(st.code, 422);
    assert!(
        st.message.contains(
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations"
        ) && st.message.contains("compilation failed"),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn server_side_apply_merges_map_lists_by_key() {
    let (_sim, client) = start().await;
    let api = widgets(&client, "default");
    api.create(&PostParams::default(), &widget("m", json!({"size": 1})))
        .await
        .unwrap();
    let cond = |t: &str, s: &str| json!({"type": t, "status": s});
    let status = |conds: Vec<serde_json::Value>| {
        json!({"apiVersion": "test.kube-sim.io/v1", "kind": "Widget", "metadata": {"name": "m"},
               "status": {"conditions": conds}})
    };
    let a = PatchParams::apply("controller-a");
    let b = PatchParams::apply("controller-b");
    api.patch_status("m", &a, &Patch::Apply(status(vec![cond("Ready", "True")])))
        .await
        .unwrap();
    // another manager adds its own condition: both stay (x-kubernetes-list-type: map)
    let w = api
        .patch_status("m", &b, &Patch::Apply(status(vec![cond("Synced", "True")])))
        .await
        .unwrap();
    assert_eq!(
        w.data["status"]["conditions"],
        json!([cond("Ready", "True"), cond("Synced", "True")])
    );
    // changing the other manager's entry conflicts, on that entry's field
    let st = api_err(
        api.patch_status("m", &b, &Patch::Apply(status(vec![cond("Ready", "False")])))
            .await,
    );
    assert_eq!(st.code, 409);
    assert!(
        st.message
            .contains(".status.conditions[type=\"Ready\"].status"),
        "{}",
        st.message
    );
    // a manager that stops applying its entry removes it, and only it
    let w = api
        .patch_status("m", &b, &Patch::Apply(status(vec![])))
        .await
        .unwrap();
    assert_eq!(
        w.data["status"]["conditions"],
        json!([cond("Ready", "True")])
    );
}
