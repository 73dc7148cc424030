//! kube-sim watches through kube's client and kube-runtime's watcher/reflector:
//! list+watch, resume from a resourceVersion, bookmarks, 410 Gone and the re-list it causes.

use crate::kube_common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_common::*;
use serde_json::json;

async fn next_event<S>(stream: &mut S, secs: u64) -> WatchEvent<DynamicObject>
where
    S: futures::Stream<Item = Result<WatchEvent<DynamicObject>, kube::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("event ok")
}

#[tokio::test]
async fn watch_from_resource_version_and_bookmarks() {
    let sim = start_with(|c| c.bookmark_interval = Duration::from_millis(200)).await;
    let client = sim.client().await.unwrap();
    let api = widgets(&client, "default");
    let w = api
        .create(&PostParams::default(), &widget("a", json!({"size": 1})))
        .await
        .unwrap();
    let rv = w.metadata.resource_version.clone().unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &widget("b", json!({"size": 3})))
        .await
        .unwrap();

    // resume from the creation's resourceVersion: exactly the later changes
    let wp = WatchParams::default().timeout(30);
    let mut s = api.watch(&wp, &rv).await.unwrap().boxed();
    match next_event(&mut s, 5).await {
        WatchEvent::Modified(o) => assert_eq!(o.data["spec"]["size"], 2),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    match next_event(&mut s, 5).await {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    // nothing else happens: a bookmark with the current resourceVersion arrives
    match next_event(&mut s, 5).await {
        WatchEvent::Bookmark(b) => {
            let brv: u64 = b.metadata.resource_version.parse().unwrap();
            assert!(brv >= rv.parse::<u64>().unwrap() + 2);
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    // deletes are seen too
    api.delete("b", &Default::default()).await.unwrap();
    loop {
        match next_event(&mut s, 5).await {
            WatchEvent::Deleted(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("b"));
                break;
            }
            WatchEvent::Bookmark(_) => continue,
            other => panic!("expected DELETED, got {other:?}"),
        }
    }

    // label-selected watch: an object leaving the selection is seen as DELETED
    let wp = WatchParams::default().labels("keep=yes").timeout(30);
    let cur = sim.resource_version().to_string();
    let mut s = api.watch(&wp, &cur).await.unwrap().boxed();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"keep": "yes"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(next_event(&mut s, 5).await, WatchEvent::Added(_)));
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"keep": "no"}}})),
    )
    .await
    .unwrap();
    assert!(matches!(
        next_event(&mut s, 5).await,
        WatchEvent::Deleted(_)
    ));
}

#[tokio::test]
async fn too_old_resource_version_is_410_gone() {
    let (sim, client) = start().await;
    let api = widgets(&client, "default");
    let w = api
        .create(&PostParams::default(), &widget("old", json!({"size": 1})))
        .await
        .unwrap();
    let rv = w.metadata.resource_version.unwrap();
    api.patch(
        "old",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": 2}})),
    )
    .await
    .unwrap();
    sim.compact();
    let mut s = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut s, 5).await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn resource_version_from_the_future_is_504() {
    let sim = start_with(|_| {}).await;
    // kube's client retries 504 (honouring Retry-After) by default; look at the answer itself
    let mut cfg = sim.kube_config().await.unwrap();
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).unwrap();
    let api = widgets(&client, "default");
    let future = (sim.resource_version() + 100).to_string();
    let r = api.watch(&WatchParams::default(), &future).await;
    let st = match r {
        Err(kube::Error::Api(s)) => *s,
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("watch from the future must fail"),
    };
    assert_eq!((st.code, st.reason.as_str()), (504, "Timeout"));
    assert!(
        st.message.starts_with("Too large resource version"),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn watcher_and_reflector_list_watch_and_relist_after_410() {
    // no bookmarks, short watch timeouts: the watcher re-watches from its last seen version
    let sim = start_with(|c| c.bookmark_interval = Duration::from_secs(3600)).await;
    let client = sim.client().await.unwrap();
    let api = widgets(&client, "default");
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &widget(&format!("pre{i}"), json!({"size": 1})),
        )
        .await
        .unwrap();
    }
    let writer = reflector::store::Writer::<DynamicObject>::new(widget_ar());
    let reader = writer.as_reader();
    let cfg = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut events = reflector(writer, watcher(api.clone(), cfg)).boxed();
    // initial list
    let mut inits = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("initial events in time")
            .expect("no watcher error")
            .expect("stream open");
        match ev {
            watcher::Event::Init => inits += 1,
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(inits, 1);
    assert_eq!(reader.state().len(), 3);

    // changes are streamed
    api.create(&PostParams::default(), &widget("live", json!({"size": 2})))
        .await
        .unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("event in time")
            .expect("no watcher error")
            .expect("stream open");
        if let watcher::Event::Apply(o) = ev
            && o.metadata.name.as_deref() == Some("live")
        {
            break;
        }
    }
    assert_eq!(reader.state().len(), 4);

    // Other kinds move the global resourceVersion, then the history is compacted: the
    // watcher's next re-watch (timeoutSeconds=1) gets 410 and it lists again.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            json!({"metadata": {"name": format!("s{i}")}, "stringData": {"k": "v"}}),
        )
        .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    sim.compact();
    let mut saw_restart = false;
    while !saw_restart {
        let ev = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("re-list in time")
            .expect("stream open");
        match ev {
            Ok(watcher::Event::Init) => saw_restart = true,
            Ok(_) => {}
            // kube-runtime surfaces the 410 before it re-lists
            Err(watcher::Error::WatchError(e)) => assert_eq!(e.code, 410),
            Err(e) => panic!("unexpected watcher error {e:?}"),
        }
    }
    // after the re-list the store is complete and follows new changes
    api.create(&PostParams::default(), &widget("after", json!({"size": 3})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reader.state().len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "store caught up");
        let _ = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    }
    assert!(
        reader
            .get(&reflector::ObjectRef::new_with("after", widget_ar()).within("default"))
            .is_some()
    );
    let log = sim.requests();
    let lists = log
        .iter()
        .filter(|l| l.starts_with("GET /apis/test.kube-sim.io/v1/namespaces/default/widgets"))
        .count();
    assert!(lists >= 3, "list, watches, and the re-list: {log:?}");
}

#[tokio::test]
async fn streaming_list_initial_events() {
    let sim = start_with(|c| c.bookmark_interval = Duration::from_secs(3600)).await;
    let client = sim.client().await.unwrap();
    let api = widgets(&client, "default");
    api.create(&PostParams::default(), &widget("x", json!({"size": 1})))
        .await
        .unwrap();
    let cfg = watcher::Config::default().streaming_lists();
    let mut s = watcher(api, cfg).default_backoff().boxed();
    let mut got = vec![];
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.try_next())
            .await
            .expect("in time")
            .expect("no error")
            .expect("open");
        match ev {
            watcher::Event::InitApply(o) => got.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(got, vec!["x"]);
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let sim = start_with(|_| {}).await;
    let client = sim.client().await.unwrap();
    let api = widgets(&client, "default");
    let mut s = api
        .watch(&WatchParams::default().timeout(290), "0")
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &widget("w", json!({"size": 1})))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut s, 5).await, WatchEvent::Added(_)));
    tokio::time::timeout(Duration::from_secs(10), sim.shutdown())
        .await
        .expect("shutdown does not wait for the watch's timeout");
    let end = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("stream ends");
    assert!(!matches!(end, Some(Ok(_))), "no more events after shutdown");
}
