//! Notifications end to end: the operator binary with `--notifications` POSTs to an HTTP
//! receiver inside the test (axum on 127.0.0.1:0), which checks every request's HMAC-SHA256
//! signature and records it. A break-glass grant reaches a good receiver, a receiver that
//! answers 500 twice and then 200, and not a closed port, whose retries delay nothing; a
//! revocation that keeps failing is notified once, and again (same event id) by the operator
//! that starts next, whose orphan sweep notifies the access of a grant deleted meanwhile.

use crate::e2e_support;
use crate::wait;

use accessgrant_operator::api::*;
use e2e_support::*;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &[u8] = b"e2e-notification-key-0123456789abcdef";
/// In every sink URL, as a Slack or Teams URL carries its token.
const URL_TOKEN: &str = "url-token-b7f3c1";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    sink: String,
    id: String,
    event: String,
    body: Value,
    /// The signature matched the body and timestamp under `KEY`, and the timestamp is recent.
    signed: bool,
    answered: u16,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Requests per sink path so far (the `flaky` path answers 500 to its first two).
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Receiver {
    /// Serves `POST /{sink}` on a free loopback port; returns its base URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/{sink}", axum::routing::post(hook))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        base
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until requests of `sink` for `event` of grant `name` satisfy `enough`.
    async fn wait(
        &self,
        what: &str,
        sink: &str,
        event: &str,
        name: &str,
        enough: impl Fn(&[Got]) -> bool,
    ) -> Vec<Got> {
        wait::eventually(
            what,
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let got: Vec<Got> = self
                    .got()
                    .into_iter()
                    .filter(|g| g.sink == sink && g.event == event && g.body["name"] == name)
                    .collect();
                let ok = enough(&got);
                async move { if ok { Ok(got) } else { Err(format!("{got:?}")) } }
            },
        )
        .await
    }
}

fn header(h: &axum::http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Verifies as a receiver would: HMAC-SHA256 of `<timestamp>.<body>`, hex, and a timestamp
/// within five minutes.
fn verify(h: &axum::http::HeaderMap, body: &[u8]) -> bool {
    let ts = header(h, "x-accessgrant-timestamp");
    let Ok(secs) = ts.parse::<i64>() else {
        return false;
    };
    if (accessgrant_operator::clock::now().timestamp() - secs).abs() > 300 {
        return false;
    }
    let Some(hex) = header(h, "x-accessgrant-signature")
        .strip_prefix("sha256=")
        .map(String::from)
    else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY);
    let msg = [ts.as_bytes(), b".", body].concat();
    ring::hmac::verify(&key, &msg, &tag).is_ok()
}

async fn hook(
    axum::extract::State(r): axum::extract::State<Receiver>,
    axum::extract::Path(sink): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let n = {
        let mut seen = r.seen.lock().expect("lock");
        let n = seen.entry(sink.clone()).or_default();
        *n += 1;
        *n
    };
    let answered = if sink == "flaky" && n <= 2 { 500 } else { 200 };
    // Every sink the receiver serves is a `json` one.
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.got.lock().expect("lock").push(Got {
        sink,
        id: header(&headers, "x-accessgrant-event-id"),
        event: header(&headers, "x-accessgrant-event"),
        signed: verify(&headers, &body),
        body: parsed,
        answered,
    });
    axum::http::StatusCode::from_u16(answered).expect("status")
}

/// Writes the key file and the `--notifications` file; returns the file's path.
fn config(env: &Env, sinks: &[(&str, String, &str, &[&str])]) -> String {
    let key = env.dir.path().join("notify.key");
    std::fs::write(&key, KEY).expect("key");
    let sinks: Vec<Value> = sinks
        .iter()
        .map(|(name, url, format, events)| {
            json!({"name": name, "url": url, "format": format, "events": events,
                "secretFile": key.to_string_lossy(), "timeout": "PT2S"})
        })
        .collect();
    let file = env.dir.path().join("notifications.yaml");
    std::fs::write(
        &file,
        serde_norway::to_string(&json!({"sinks": sinks})).expect("yaml"),
    )
    .expect("config");
    file.to_string_lossy().to_string()
}

/// A loopback address nothing listens on.
fn closed_port() -> String {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    format!("http://{addr}/dead?token={URL_TOKEN}")
}

async fn notifications(env: &Env, sink: &str, outcome: &str) -> f64 {
    let (_, text) = env.admin_get("/metrics").await;
    metric(
        &text,
        "accessgrant_notifications_total",
        &[("sink", sink), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

async fn metric_reaches(env: &Env, sink: &str, outcome: &str, at_least: f64) {
    wait::eventually(
        &format!("accessgrant_notifications_total{{sink={sink},outcome={outcome}}} >= {at_least}"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async move {
            let v = notifications(env, sink, outcome).await;
            if v >= at_least {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_break_glass_grant_is_notified_signed_through_a_flaky_receiver_and_a_dead_one_delays_nothing()
 {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let mut env = Env::start_bare().await;
    let file = config(
        &env,
        &[
            (
                "good",
                format!("{base}/good?token={URL_TOKEN}"),
                "json",
                &["BreakGlass"],
            ),
            (
                "flaky",
                format!("{base}/flaky?token={URL_TOKEN}"),
                "json",
                &["BreakGlass"],
            ),
            ("dead", closed_port(), "teams", &["BreakGlass"]),
        ],
    );
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    env.register_webhooks(addr).await;
    env.namespace_with_policy("notify-bg", json!({
        "jit": {"virtualMachines": [format!("{}/providers/Microsoft.Compute/virtualMachines/*", rg())], "ports": [22], "sourcePrefixes": ["10.0.0.0/8"]},
        "maxDuration": "PT2H",
        "breakGlass": {"maxDuration": "PT1H", "requesters": ["group:oncall"]}
    }))
    .await;
    env.start_operator_with(&[
        ("WEBHOOK_ADDR", &addr.to_string()),
        ("NOTIFICATIONS", &file),
    ]);
    env.webhook_serving("notify-bg", "alice@example.com", &["oncall"])
        .await;
    let alice: Api<AccessGrant> = Api::namespaced(
        env.client_as("alice@example.com", &["oncall"]).await,
        "notify-bg",
    );

    let bg = with_spec(jit_grant("bg", 1, 22, "10.0.0.9", "PT30M"), |s| {
        s.break_glass = Some(true);
        s.justification = Some("db down, INC-42".into());
    });
    alice
        .create(&PostParams::default(), &bg)
        .await
        .expect("break-glass create");
    // A dead sink (connection refused, retried with backoff) does not hold the grant up: it
    // reaches Active within the usual wait.
    let g = wait_for(&alice, "bg", "Active", 60, phase(Phase::Active)).await;
    let uid = g.metadata.uid.clone().expect("uid");

    let good = receiver
        .wait(
            "a BreakGlass notification",
            "good",
            "BreakGlass",
            "bg",
            |g| !g.is_empty(),
        )
        .await;
    let n = &good[0];
    assert!(n.signed, "signature verifies: {n:?}");
    assert!(
        n.id.starts_with(&format!("{uid}.")) && n.id.ends_with(".BreakGlass"),
        "{n:?}"
    );
    assert_eq!(n.body["event"], "BreakGlass");
    assert_eq!(n.body["namespace"], "notify-bg");
    assert_eq!(n.body["uid"], uid.as_str());
    assert_eq!(n.body["kind"], "JIT");
    assert_eq!(n.body["breakGlass"], true);
    assert_eq!(n.body["requestedBy"], "alice@example.com");
    assert!(
        n.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("db down, INC-42")),
        "{n:?}"
    );
    assert!(n.body.get("spec").is_none() && n.body.get("justification").is_none());

    // 500, 500, then 200: the same notification (same id, signed anew each time) gets there.
    let flaky = receiver
        .wait(
            "the flaky receiver's third try",
            "flaky",
            "BreakGlass",
            "bg",
            |g| g.iter().any(|x| x.answered == 200),
        )
        .await;
    assert_eq!(
        flaky.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [500, 500, 200],
        "{flaky:?}"
    );
    assert!(flaky.iter().all(|g| g.signed && g.id == n.id), "{flaky:?}");
    metric_reaches(&env, "flaky", "retried", 2.0).await;
    metric_reaches(&env, "flaky", "delivered", 1.0).await;
    metric_reaches(&env, "good", "delivered", 1.0).await;
    // The dead sink is being retried, and nothing was delivered there.
    metric_reaches(&env, "dead", "retried", 1.0).await;
    assert_eq!(notifications(&env, "dead", "delivered").await, 0.0);
    assert_eq!(
        receiver.got().iter().filter(|g| g.sink == "good").count(),
        1,
        "sent once"
    );
    // Neither the key nor a URL (Slack's and Teams' carry their token) is in any log line.
    let out = env.operator_output();
    assert!(
        out.contains("tcp connect error"),
        "the dead sink's retries are logged with their cause"
    );
    for secret in [URL_TOKEN, std::str::from_utf8(KEY).expect("utf8")] {
        assert!(!out.contains(secret), "{secret:?} in the operator's output");
    }
}

#[tokio::test]
async fn a_failing_revocation_is_notified_once_and_again_by_the_next_operator_and_orphans_too() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let mut env = Env::start_bare().await;
    let file = config(
        &env,
        &[(
            "ops",
            format!("{base}/ops"),
            "json",
            &["RevocationFailing", "Denied", "OrphanRemoved"],
        )],
    );
    let api = env.namespace("notify-rev", true).await;
    env.start_operator_with(&[("NOTIFICATIONS", &file)]);

    // Denied by the AccessPolicy (port 2222 is not allowed).
    api.create(
        &PostParams::default(),
        &jit_grant("denied", 1, 2222, "10.0.0.9", "PT30M"),
    )
    .await
    .expect("create");
    let d = receiver
        .wait("a Denied notification", "ops", "Denied", "denied", |g| {
            !g.is_empty()
        })
        .await;
    assert!(d[0].signed, "{d:?}");
    assert_eq!(d[0].body["phase"], "Denied");
    assert_eq!(d[0].body["reason"], "PolicyDenied");

    let grant = with_spec(pim_grant("held", "Assign", READER, "PT30M"), |s| {
        s.pim.as_mut().expect("pim").principal_id = DEPLOYER_OID.into()
    });
    api.create(&PostParams::default(), &grant)
        .await
        .expect("create");
    wait_for(&api, "held", "Active", 60, phase(Phase::Active)).await;
    api.create(
        &PostParams::default(),
        &jit_grant("orphan", 1, 22, "10.0.0.7", "PT30M"),
    )
    .await
    .expect("create");
    wait_for(&api, "orphan", "Active", 60, phase(Phase::Active)).await;
    // Every PIM write now fails with a 500: the removal keeps failing.
    let r = env
        .control(
            reqwest::Method::POST,
            "/_sim/faults",
            Some(json!({"operation": "RoleAssignmentScheduleRequests_Create", "subscription": SUB, "kind": "error", "status": 500})),
        )
        .await;
    assert!(r.status().is_success());
    api.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let first = receiver
        .wait(
            "a RevocationFailing notification",
            "ops",
            "RevocationFailing",
            "held",
            |g| !g.is_empty(),
        )
        .await;
    assert!(first[0].signed, "{first:?}");
    assert_eq!(first[0].body["phase"], "Revoking");
    // Retried by the planner more than once: still one notification for the streak.
    wait_for(&api, "held", "retried twice", 60, |s| {
        s.retry.as_ref().is_some_and(|r| r.failures >= 3)
    })
    .await;
    let got = receiver.got();
    let rev: Vec<_> = got
        .iter()
        .filter(|g| g.event == "RevocationFailing")
        .collect();
    assert_eq!(rev.len(), 1, "once per failure streak: {rev:?}");

    // A crash; meanwhile a grant goes without the operator (its finalizer removed), leaving
    // its access behind. The next operator sends what the history holds again, with the same
    // ids, and its orphan sweep notifies the access it removes.
    env.kill_operator();
    api.patch(
        "orphan",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove the finalizer");
    api.delete("orphan", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&api, "orphan", 30).await;
    env.start_operator_with(&[("NOTIFICATIONS", &file), ("ORPHAN_SWEEP_INTERVAL", "PT2S")]);
    let again = receiver
        .wait(
            "the replayed RevocationFailing",
            "ops",
            "RevocationFailing",
            "held",
            |g| g.len() >= 2,
        )
        .await;
    assert!(
        again.iter().all(|g| g.signed && g.id == first[0].id),
        "{again:?}"
    );
    receiver
        .wait("the replayed Denied", "ops", "Denied", "denied", |g| {
            g.len() >= 2
        })
        .await;
    let orphan = receiver
        .wait(
            "an OrphanRemoved notification",
            "ops",
            "OrphanRemoved",
            "orphan",
            |g| !g.is_empty(),
        )
        .await;
    assert!(orphan[0].signed, "{orphan:?}");
    assert_eq!(orphan[0].body["kind"], "JIT");
    assert_eq!(orphan[0].body["namespace"], "notify-rev");

    // Azure answers again: the access goes, and the grant with it.
    let r = env
        .control(reqwest::Method::DELETE, "/_sim/faults", None)
        .await;
    assert!(r.status().is_success());
    wait_gone(&api, "held", 90).await;
}
