//! The admin server over real HTTP on 127.0.0.1:0: `/metrics` shows what the `Metrics` calls
//! recorded, `/livez`, `/readyz` follow `Readiness`, and `PUT /loglevel` changes the filter of
//! a (scoped) subscriber or rejects a bad one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use accessgrant_operator::telemetry::{
    AdminConfig, GRANT_KINDS, Metrics, OPENMETRICS_CONTENT_TYPE, PHASES, Readiness,
    reloadable_filter, serve_admin,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing_subscriber::layer::SubscriberExt;

struct Admin {
    base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Admin {
    /// The listener is bound before this returns, so requests queue in its backlog: no wait
    /// for the server to "come up".
    async fn start(metrics: Metrics, ready: Readiness, cfg: impl Into<AdminConfig>) -> Admin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_admin(listener, metrics, ready, cfg, async {
            let _ = stopped.await;
        }));
        Admin { base, stop, task }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// A plain-http client. The crate's reqwest has `rustls-no-provider`, so even a client that
/// never speaks TLS needs a provider: hand it ring's (as `azure::client` does) instead of
/// installing a process-wide default.
fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String, String) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line {line:?} in:\n{text}"
    );
}

#[tokio::test]
async fn metrics_endpoint_shows_every_family_with_recorded_values() {
    let metrics = Metrics::new();
    metrics.reconcile(Duration::from_millis(3), true);
    metrics.reconcile(Duration::from_millis(40), true);
    metrics.reconcile(Duration::from_secs(2), false);
    metrics.failure("Throttled");
    let ms = Duration::from_millis;
    metrics.arm_call(
        "RoleAssignmentScheduleRequests_Create",
        "ok",
        Some(201),
        Some(ms(40)),
    );
    metrics.arm_call(
        "RoleAssignmentScheduleRequests_Create",
        "ok",
        Some(201),
        Some(ms(300)),
    );
    metrics.arm_call(
        "RoleAssignmentScheduleRequests_Create",
        "Throttled",
        Some(429),
        Some(ms(20)),
    );
    // No request sent (the token failed): counted, not timed.
    metrics.arm_call("JitNetworkAccessPolicies_Initiate", "Auth", None, None);
    metrics.arm_call(
        "JitNetworkAccessPolicies_Initiate",
        "Transient",
        None,
        Some(ms(30_000)),
    );
    metrics.arm_call(
        "JitNetworkAccessPolicies_Initiate",
        "Transient",
        Some(503),
        Some(ms(8)),
    );
    metrics.throttle_wait(1.5);
    metrics.throttle_wait(0.25);
    metrics.set_grants(&[(("JIT", "Active"), 7), (("PIM", "PendingApproval"), 2)]);
    metrics.revoke_lag("delete", 1.2);
    metrics.revoke_lag("suspend", 0.2);
    metrics.revocation_failure("PIM");
    metrics.set_leader(true);
    metrics.time_to_active(12.0);
    metrics.expiry_lag(0.3);

    let admin = Admin::start(metrics.clone(), Readiness::new(), None).await;
    let client = http_client();
    let (status, ct, text) = get(&client, admin.url("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);

    for family in [
        "accessgrant_reconciles",
        "accessgrant_reconcile_failures",
        "accessgrant_reconcile_duration_seconds",
        "accessgrant_arm_calls",
        "accessgrant_arm_throttle_wait_seconds",
        "accessgrant_grants",
        "accessgrant_time_to_active_seconds",
        "accessgrant_expiry_status_lag_seconds",
        "accessgrant_arm_request_duration_seconds",
        "accessgrant_revoke_lag_seconds",
        "accessgrant_revocation_failures",
        "accessgrant_leader",
        "accessgrant_ready",
        "accessgrant_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no family {family} in:\n{text}"
        );
    }

    has_line(&text, r#"accessgrant_reconciles_total{outcome="ok"} 2"#);
    has_line(&text, r#"accessgrant_reconciles_total{outcome="error"} 1"#);
    has_line(
        &text,
        r#"accessgrant_reconcile_failures_total{category="Throttled"} 1"#,
    );
    has_line(&text, "accessgrant_reconcile_duration_seconds_count 3");
    // 3 ms is above the 2 ms bucket and within 4 ms; 40 ms within 64 ms; 2 s within 2.048 s.
    has_line(
        &text,
        r#"accessgrant_reconcile_duration_seconds_bucket{le="0.002"} 0"#,
    );
    has_line(
        &text,
        r#"accessgrant_reconcile_duration_seconds_bucket{le="0.004"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_reconcile_duration_seconds_bucket{le="2.048"} 3"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_calls_total{operation="RoleAssignmentScheduleRequests_Create",outcome="ok",status_class="2xx"} 2"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_calls_total{operation="RoleAssignmentScheduleRequests_Create",outcome="Throttled",status_class="429"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_calls_total{operation="JitNetworkAccessPolicies_Initiate",outcome="Transient",status_class="none"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_calls_total{operation="JitNetworkAccessPolicies_Initiate",outcome="Transient",status_class="5xx"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_calls_total{operation="JitNetworkAccessPolicies_Initiate",outcome="Auth",status_class="none"} 1"#,
    );
    // Latency: 40 ms and 300 ms in the two successful creates' buckets; the untimed Auth call
    // has no histogram; a 30 s timeout lands in the last finite bucket.
    has_line(
        &text,
        r#"accessgrant_arm_request_duration_seconds_count{operation="RoleAssignmentScheduleRequests_Create",outcome="ok"} 2"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_request_duration_seconds_bucket{le="0.05",operation="RoleAssignmentScheduleRequests_Create",outcome="ok"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_request_duration_seconds_bucket{le="0.5",operation="RoleAssignmentScheduleRequests_Create",outcome="ok"} 2"#,
    );
    has_line(
        &text,
        r#"accessgrant_arm_request_duration_seconds_bucket{le="30.0",operation="JitNetworkAccessPolicies_Initiate",outcome="Transient"} 2"#,
    );
    assert!(
        !text.contains(
            r#"accessgrant_arm_request_duration_seconds_count{operation="JitNetworkAccessPolicies_Initiate",outcome="Auth"}"#
        ),
        "{text}"
    );
    has_line(&text, "accessgrant_arm_throttle_wait_seconds_total 1.75");
    for kind in GRANT_KINDS {
        for phase in PHASES {
            let n = match (kind, phase) {
                ("JIT", "Active") => 7,
                ("PIM", "PendingApproval") => 2,
                _ => 0,
            };
            has_line(
                &text,
                &format!(r#"accessgrant_grants{{kind="{kind}",phase="{phase}"}} {n}"#),
            );
        }
    }
    has_line(
        &text,
        r#"accessgrant_revoke_lag_seconds_count{trigger="delete"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_revoke_lag_seconds_bucket{le="1.0",trigger="delete"} 0"#,
    );
    has_line(
        &text,
        r#"accessgrant_revoke_lag_seconds_bucket{le="2.5",trigger="delete"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_revoke_lag_seconds_count{trigger="policy"} 0"#,
    );
    has_line(
        &text,
        r#"accessgrant_revocation_failures_total{kind="PIM"} 1"#,
    );
    has_line(
        &text,
        r#"accessgrant_revocation_failures_total{kind="JIT"} 0"#,
    );
    has_line(&text, "accessgrant_leader 1");
    // Set at each scrape from the readiness flags (none set here).
    has_line(&text, "accessgrant_ready 0");
    has_line(
        &text,
        &format!(
            r#"accessgrant_build_info{{version="{}",commit="{}"}} 1"#,
            env!("CARGO_PKG_VERSION"),
            accessgrant_operator::telemetry::BUILD_COMMIT
        ),
    );
    has_line(&text, "accessgrant_time_to_active_seconds_count 1");
    has_line(&text, "accessgrant_time_to_active_seconds_sum 12.0");
    has_line(
        &text,
        r#"accessgrant_time_to_active_seconds_bucket{le="10.0"} 0"#,
    );
    has_line(
        &text,
        r#"accessgrant_time_to_active_seconds_bucket{le="30.0"} 1"#,
    );
    has_line(&text, "accessgrant_expiry_status_lag_seconds_count 1");
    has_line(
        &text,
        r#"accessgrant_expiry_status_lag_seconds_bucket{le="0.25"} 0"#,
    );
    has_line(
        &text,
        r#"accessgrant_expiry_status_lag_seconds_bucket{le="0.5"} 1"#,
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    // A recount replaces the previous one: a phase that emptied goes back to 0.
    metrics.set_grants(&[(("PIM", "Expired"), 7)]);
    let (_, _, text) = get(&client, admin.url("/metrics")).await;
    has_line(&text, r#"accessgrant_grants{kind="JIT",phase="Active"} 0"#);
    has_line(
        &text,
        r#"accessgrant_grants{kind="PIM",phase="PendingApproval"} 0"#,
    );
    has_line(&text, r#"accessgrant_grants{kind="PIM",phase="Expired"} 7"#);

    // Without a LogReload there is no log level route.
    let resp = client
        .put(admin.url("/loglevel"))
        .body("debug")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    drop(client);
    admin.stop().await;
}

#[tokio::test]
async fn livez_always_ok_readyz_lists_missing_conditions() {
    let ready = Readiness::new();
    let admin = Admin::start(Metrics::new(), ready.clone(), None).await;
    let client = http_client();

    let (status, _, body) = get(&client, admin.url("/livez")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    let (status, _, body) = get(&client, admin.url("/readyz")).await;
    assert_eq!(status, 503);
    for reason in ["crds_established", "caches_synced", "azure_token_obtained"] {
        assert!(body.contains(reason), "{body}");
    }

    ready.set_crds_established(true);
    ready.set_azure_token_obtained(true);
    let (status, _, body) = get(&client, admin.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("caches_synced"), "{body}");
    assert!(!body.contains("crds_established"), "{body}");
    assert!(!body.contains("azure_token_obtained"), "{body}");

    ready.set_caches_synced(true);
    let (status, _, body) = get(&client, admin.url("/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    // Losing the token makes the pod unready again; liveness does not care.
    ready.set_azure_token_obtained(false);
    let (status, _, body) = get(&client, admin.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("azure_token_obtained"), "{body}");
    let (status, _, _) = get(&client, admin.url("/livez")).await;
    assert_eq!(status, 200);

    drop(client);
    admin.stop().await;
}

/// Counts the events that get past the filter.
struct CountEvents(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountEvents {
    fn on_event(
        &self,
        _event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn emit_debug() {
    tracing::debug!(target: "telemetry_test", "a debug event");
}

fn emit_info() {
    tracing::info!(target: "telemetry_test", "an info event");
}

// Current-thread runtime: the scoped subscriber below is this thread's default, and the
// server task that reloads its filter runs on the same thread.
#[tokio::test]
async fn loglevel_endpoint_changes_the_filter_and_rejects_bad_ones() {
    let (filter, reload) = reloadable_filter("info").unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(CountEvents(seen.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let count = |emit: fn()| {
        let before = seen.load(Ordering::SeqCst);
        emit();
        seen.load(Ordering::SeqCst) - before
    };
    assert_eq!(count(emit_debug), 0, "debug is filtered out at info");
    assert_eq!(count(emit_info), 1);

    let admin = Admin::start(Metrics::new(), Readiness::new(), Some(reload.clone())).await;
    let client = http_client();
    let put = |body: &'static str| {
        let req = client.put(admin.url("/loglevel")).body(body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };

    let (status, _) = put("debug").await;
    assert_eq!(status, 200);
    assert_eq!(count(emit_debug), 1, "debug passes after PUT debug");
    let (status, _, body) = get(&client, admin.url("/loglevel")).await;
    assert_eq!((status, body.as_str()), (200, "debug"));

    let (status, body) = put("telemetry_test=notalevel").await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid filter"), "{body}");
    assert_eq!(count(emit_debug), 1, "a rejected filter leaves debug on");

    let (status, _) = put("warn").await;
    assert_eq!(status, 200);
    assert_eq!(count(emit_info), 0, "info is filtered out at warn");
    assert_eq!(count(emit_debug), 0);
    assert_eq!(reload.current().unwrap(), "warn");

    drop(client);
    admin.stop().await;
}

#[tokio::test]
async fn metrics_need_the_bearer_token_from_the_file_and_the_probes_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-token\n").unwrap();
    let admin = Admin::start(
        Metrics::new(),
        Readiness::new(),
        AdminConfig {
            log: None,
            metrics_token_file: Some(file.clone()),
        },
    )
    .await;
    let client = http_client();
    let scrape = |token: Option<&str>| {
        let mut r = client.get(admin.url("/metrics"));
        if let Some(t) = token {
            r = r.header("Authorization", t);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    assert_eq!(scrape(None).await.0, 401, "no token");
    assert_eq!(scrape(Some("Bearer wrong")).await.0, 401, "wrong token");
    assert_eq!(
        scrape(Some("Basic s3cret-token")).await.0,
        401,
        "not a bearer"
    );
    assert_eq!(scrape(Some("Bearer s3cret-token")).await.0, 200);
    let (_, body) = scrape(Some("Bearer s3cret-token")).await;
    assert!(body.ends_with("# EOF\n"), "{body}");
    // The refusal names nothing of the token.
    let (_, refused) = scrape(Some("Bearer wrong")).await;
    assert!(!refused.contains("s3cret"), "{refused}");
    // A rotated Secret takes effect at the next scrape; an empty one admits nobody.
    std::fs::write(&file, "rotated").unwrap();
    assert_eq!(scrape(Some("Bearer s3cret-token")).await.0, 401);
    assert_eq!(scrape(Some("Bearer rotated")).await.0, 200);
    std::fs::write(&file, "").unwrap();
    assert_eq!(scrape(Some("Bearer ")).await.0, 401, "empty token file");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        scrape(Some("Bearer rotated")).await.0,
        401,
        "token file gone"
    );
    // Probes stay open (the kubelet sends no token); no log level route on this listener.
    let (status, _, _) = get(&client, admin.url("/livez")).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&client, admin.url("/readyz")).await;
    assert_eq!(status, 503, "not ready, but answered without a token");
    let put = client
        .put(admin.url("/loglevel"))
        .body("debug")
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status().as_u16(),
        404,
        "PUT /loglevel is not routed here"
    );
    admin.stop().await;
}
