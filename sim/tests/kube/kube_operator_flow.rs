//! The calls an operator like accessgrant-operator makes, in order, against kube-sim through
//! kube's client and kube-runtime: watch, add a finalizer with JSON-patch test+add, write
//! status by server-side apply, record events, then on delete remove the finalizer with
//! test+remove and see the object go.

use crate::kube_common;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube_common::*;
use serde_json::json;

const FINALIZER: &str = "accessgrant.io/revoke";
const MANAGER: &str = "accessgrant-operator";

#[tokio::test]
async fn operator_style_lifecycle() {
    let (sim, client) = start().await;
    let api = widgets(&client, "default");
    let mut stream = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let user = api
        .create(
            &PostParams::default(),
            &widget("g", json!({"color": "green"})),
        )
        .await
        .unwrap();

    // 1. the controller sees it and adds its finalizer the way kube-runtime's finalizer
    //    helper does: `test` that there are none (null), then `add`
    let seen = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.metadata.uid, user.metadata.uid);
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
    ]))
    .unwrap();
    let with_fin = api
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::<()>::Json(add.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        with_fin.metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
    // a second controller racing with the same patch fails its test: finalizers exist now
    let st = api_err(
        api.patch("g", &PatchParams::default(), &Patch::<()>::Json(add))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));

    // 2. status by server-side apply, observedGeneration from the object
    let status = json!({
        "apiVersion": "test.kube-sim.io/v1", "kind": "Widget", "metadata": {"name": "g"},
        "status": {"phase": "Active", "conditions": [{"type": "Ready", "status": "True"}]}
    });
    let pp = PatchParams::apply(MANAGER).force();
    let w = api
        .patch_status("g", &pp, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Active");
    let rv_after_status = w.metadata.resource_version.clone();
    // an identical apply writes nothing
    let w = api
        .patch_status("g", &pp, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(w.metadata.resource_version, rv_after_status);

    // 3. an event about it
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("test.kube-sim.io/v1".into()),
        kind: Some("Widget".into()),
        name: Some("g".into()),
        namespace: Some("default".into()),
        uid: w.metadata.uid.clone(),
        ..Default::default()
    };
    recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: "Granted".into(),
                note: Some("access is active".into()),
                action: "Grant".into(),
                secondary: None,
            },
            &reference,
        )
        .await
        .unwrap();

    // 4. the user deletes it: it stays (Terminating) with a new generation
    api.delete("g", &DeleteParams::default()).await.unwrap();
    let terminating = loop {
        let o = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if o.metadata.deletion_timestamp.is_some() {
            break o;
        }
    };
    assert_eq!(terminating.metadata.generation, Some(2));

    // 5. after cleanup the controller removes its finalizer (test+remove) and it is gone
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    api.patch("g", &PatchParams::default(), &Patch::<()>::Json(remove))
        .await
        .unwrap();
    // a fresh watcher's initial list no longer has it
    let mut fresh = watcher(api.clone(), watcher::Config::default()).boxed();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), fresh.next())
            .await
            .expect("initial list in time")
            .expect("stream open")
            .expect("no error");
        match ev {
            watcher::Event::InitApply(o) => panic!("deleted object still listed: {o:?}"),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(api_err(api.get("g").await).code, 404);
    let log = sim.requests();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /apis/events.k8s.io/v1/namespaces/default/events 201"))
    );
}
