//! Bad input gets a proper `Status` 4xx and never breaks kube-sim.

use crate::kube_common;

use kube_common::*;
use serde_json::{Value, json};

async fn send(
    client: &kube::Client,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(body.to_vec())
        .unwrap();
    match client.request::<Value>(req).await {
        Ok(v) => (200, v),
        Err(kube::Error::Api(s)) => (s.code, json!({"reason": s.reason, "message": s.message})),
        Err(e) => panic!("transport error for {method} {path}: {e:?}"),
    }
}

#[tokio::test]
async fn malformed_requests_get_4xx_statuses() {
    let sim = start_with(|_| {}).await;
    let mut cfg = sim.kube_config().await.unwrap();
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).unwrap();
    let coll = "/apis/test.kube-sim.io/v1/namespaces/default/widgets";
    let one = "/apis/test.kube-sim.io/v1/namespaces/default/widgets/w";
    let json_ct = "application/json";
    let created = send(
        &client,
        "POST",
        coll,
        json_ct,
        br#"{"apiVersion":"test.kube-sim.io/v1","kind":"Widget","metadata":{"name":"w"},"spec":{"size":1}}"#,
    )
    .await;
    assert_eq!(created.0, 200, "{:?}", created.1);

    let cases: Vec<(&str, String, &str, &[u8], u16)> = vec![
        ("POST", coll.to_string(), json_ct, b"{not json", 400),
        ("POST", coll.to_string(), json_ct, b"[1,2]", 400),
        ("POST", coll.to_string(), json_ct, b"", 400),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":"x"}"#,
            400,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":{"labels":{"a":1}}}"#,
            400,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"kind":"Gadget","metadata":{"name":"z"}}"#,
            400,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":{"name":"Bad_Name"},"spec":{"size":1}}"#,
            422,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":{},"spec":{"size":1}}"#,
            422,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":{"name":"l1","labels":{"bad key":"v"}},"spec":{"size":1}}"#,
            422,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":{"name":"l2","labels":{"ok":"not valid!"}},"spec":{"size":1}}"#,
            422,
        ),
        (
            "POST",
            coll.to_string(),
            json_ct,
            br#"{"metadata":{"name":"l3","finalizers":["no spaces/allowed here"]},"spec":{"size":1}}"#,
            422,
        ),
        (
            "PUT",
            one.to_string(),
            json_ct,
            br#"{"metadata":{"name":"other"}}"#,
            400,
        ),
        (
            "PUT",
            one.to_string(),
            json_ct,
            br#"{"metadata":{"name":"w"},"spec":{"size":2}}"#,
            422,
        ),
        (
            "PATCH",
            one.to_string(),
            "application/json-patch+json",
            b"{}",
            400,
        ),
        (
            "PATCH",
            one.to_string(),
            "application/json-patch+json",
            br#"[{"op":"replace","path":"","value":"str"}]"#,
            422,
        ),
        (
            "PATCH",
            one.to_string(),
            "application/json-patch+json",
            br#"[{"op":"remove","path":"/nope/x"}]"#,
            422,
        ),
        (
            "PATCH",
            one.to_string(),
            "application/merge-patch+json",
            br#"{"metadata":"x"}"#,
            422,
        ),
        (
            "PATCH",
            one.to_string(),
            "application/merge-patch+json",
            b"nope",
            400,
        ),
        (
            "PATCH",
            one.to_string(),
            "application/strategic-merge-patch+json",
            b"{}",
            415,
        ),
        ("PATCH", one.to_string(), "text/plain", b"{}", 415),
        (
            "PATCH",
            one.to_string(),
            "application/apply-patch+yaml",
            b"a: [",
            400,
        ),
        (
            "PATCH",
            format!("{one}?fieldManager=m"),
            "application/apply-patch+yaml",
            b"spec: {}",
            400,
        ),
        (
            "PATCH",
            format!("{one}?fieldManager=m&force=true"),
            "application/merge-patch+json",
            b"{}",
            400,
        ),
        (
            "GET",
            format!("{coll}?labelSelector=a%20in%20(b"),
            json_ct,
            b"",
            400,
        ),
        (
            "GET",
            format!("{coll}?fieldSelector=nonsense"),
            json_ct,
            b"",
            400,
        ),
        ("GET", format!("{coll}?continue=%%%"), json_ct, b"", 400),
        (
            "GET",
            format!("{coll}?watch=true&resourceVersion=abc"),
            json_ct,
            b"",
            400,
        ),
        (
            "GET",
            "/apis/test.kube-sim.io/v1/namespaces/default/nothings".to_string(),
            json_ct,
            b"",
            404,
        ),
        ("GET", "/apis/nope.io/v1".to_string(), json_ct, b"", 404),
        ("GET", format!("{one}/scale"), json_ct, b"", 404),
        ("POST", one.to_string(), json_ct, b"{}", 405),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/none/token".to_string(),
            json_ct,
            b"{}",
            404,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/none/token".to_string(),
            json_ct,
            b"{",
            400,
        ),
    ];
    for (method, path, ct, body, want) in cases {
        let (code, st) = send(&client, method, &path, ct, body).await;
        assert_eq!(
            code,
            want,
            "{method} {path} {}: {st}",
            String::from_utf8_lossy(body)
        );
    }
    // kube-apiserver's 3 MiB request limit
    let big = vec![b' '; 3 * 1024 * 1024 + 1];
    let (code, st) = send(&client, "POST", coll, json_ct, &big).await;
    assert_eq!(code, 413, "{st}");

    // still serving, object intact
    let (code, w) = send(&client, "GET", one, json_ct, b"").await;
    assert_eq!(code, 200);
    assert_eq!(w["spec"]["size"], 1);
}
