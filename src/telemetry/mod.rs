//! Telemetry: Prometheus/OpenMetrics metrics, readiness, the admin HTTP server and logging.
//!
//! Self-contained so `main` and the controller only hold handles:
//! - [`Metrics`] owns a `prometheus_client` registry with every `accessgrant_*` family. Labels
//!   are `&'static str` categories from fixed sets (outcomes, error categories, ARM operation
//!   ids, phases), never object names or Debug strings: a label value per grant would be a new
//!   series per grant, and we plan for 100k grants.
//! - [`Readiness`] is three flags (CRDs established, caches synced, Azure token obtained).
//! - [`serve_admin`] serves `/metrics`, `/livez`, `/readyz` and optionally `PUT /loglevel` on a
//!   listener the caller binds (tests bind port 0).
//! - [`init_logging`] installs the global tracing subscriber with a reloadable `EnvFilter`.
//!
//! No wall-clock reads here (`clippy.toml`): callers pass durations and seconds in.
//!
//! The probes are unauthenticated (the kubelet sends no token); `/metrics` requires a bearer
//! token when [`AdminConfig::metrics_token_file`] is set. `PUT /loglevel` is only routed when
//! the caller hands a [`LogReload`] in, and takes at most 1 KiB: the operator serves it on a
//! second listener bound to localhost (`--loglevel-addr`), never on the metrics port that its
//! Service exposes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

mod metrics;
pub use metrics::*;

#[derive(Debug, Default)]
struct ReadinessInner {
    crds_established: AtomicBool,
    caches_synced: AtomicBool,
    azure_token_obtained: AtomicBool,
    admission_serving: AtomicBool,
}

/// Readiness: the operator is ready once its CRDs are established, its watch caches have
/// synced, and it has obtained an Azure token. Cheap to clone; starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

impl Readiness {
    /// All three conditions false.
    pub fn new() -> Self {
        Self::default()
    }

    /// The AccessGrant/AccessPolicy CRDs are (or are no longer) established.
    pub fn set_crds_established(&self, v: bool) {
        self.inner.crds_established.store(v, Ordering::Release);
    }

    /// The controller's reflectors have (or have not) completed their initial list.
    pub fn set_caches_synced(&self, v: bool) {
        self.inner.caches_synced.store(v, Ordering::Release);
    }

    /// An Azure token was (or could no longer be) obtained.
    pub fn set_azure_token_obtained(&self, v: bool) {
        self.inner.azure_token_obtained.store(v, Ordering::Release);
    }

    /// The admission webhook is (or is no longer) serving: stamp key and certificate loaded,
    /// AccessPolicies cached. Independent of leadership: every replica serves admission.
    pub fn set_admission_serving(&self, v: bool) {
        self.inner.admission_serving.store(v, Ordering::Release);
    }

    /// Whether this replica serves admission (`GET /readyz/admission`).
    pub fn admission_serving(&self) -> bool {
        self.inner.admission_serving.load(Ordering::Acquire)
    }

    /// Whether all three conditions hold.
    pub fn is_ready(&self) -> bool {
        self.reasons_not_ready().is_empty()
    }

    /// The conditions that do not hold, in a fixed order: `crds_established`,
    /// `caches_synced`, `azure_token_obtained`.
    pub fn reasons_not_ready(&self) -> Vec<&'static str> {
        let i = &self.inner;
        [
            (&i.crds_established, "crds_established"),
            (&i.caches_synced, "caches_synced"),
            (&i.azure_token_obtained, "azure_token_obtained"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Acquire))
        .map(|(_, name)| name)
        .collect()
    }
}

/// Handle to change the log filter of the subscriber [`init_logging`] installed (or of any
/// subscriber built on [`reloadable_filter`]'s layer).
#[derive(Clone, Debug)]
pub struct LogReload {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

/// Longest filter string accepted by [`LogReload::set_level`] and `PUT /loglevel`.
pub const MAX_FILTER_LEN: usize = 1024;

fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    if filter.len() > MAX_FILTER_LEN {
        return Err(format!("filter longer than {MAX_FILTER_LEN} bytes"));
    }
    EnvFilter::try_new(filter.trim()).map_err(|e| format!("invalid filter: {e}"))
}

impl LogReload {
    /// Replaces the filter with `filter` (`EnvFilter` syntax, e.g. `info,accessgrant_operator=debug`).
    /// An invalid filter leaves the current one in force.
    pub fn set_level(&self, filter: &str) -> Result<(), String> {
        let f = parse_filter(filter)?;
        self.handle
            .reload(f)
            .map_err(|e| format!("reloading the filter failed: {e}"))
    }

    /// The filter in force, in `EnvFilter` syntax.
    pub fn current(&self) -> Result<String, String> {
        self.handle
            .with_current(|f| f.to_string())
            .map_err(|e| format!("reading the filter failed: {e}"))
    }
}

/// A reloadable `EnvFilter` layer (to put first on a `tracing_subscriber::Registry`) and its
/// handle. [`init_logging`] uses it; tests use it on a scoped subscriber.
pub fn reloadable_filter(
    filter: &str,
) -> Result<
    (
        reload::Layer<EnvFilter, tracing_subscriber::Registry>,
        LogReload,
    ),
    String,
> {
    let (layer, handle) = reload::Layer::new(parse_filter(filter)?);
    Ok((layer, LogReload { handle }))
}

/// Installs the global subscriber: logs to stderr as `text` or `json`, filtered by `RUST_LOG`
/// when set (an invalid `RUST_LOG` is an error, not silently ignored) or else by
/// `default_filter`. Can succeed once per process.
pub fn init_logging(format: &str, default_filter: &str) -> Result<LogReload, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default_filter.to_owned(),
    };
    let (filter_layer, reload) = reloadable_filter(&filter)?;
    let (text, json) = match format {
        "text" => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only help a terminal, not a log pipeline.
                    .with_ansi(false),
            ),
            None,
        ),
        "json" => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        ),
        other => return Err(format!("unknown log format {other:?}: use text or json")),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|e| format!("installing the log subscriber failed: {e}"))?;
    Ok(reload)
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    ready: Readiness,
    log: Option<LogReload>,
    metrics_token: Option<std::path::PathBuf>,
}

/// What the admin server serves beyond metrics and probes.
#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    /// Route `GET`/`PUT /loglevel` (only on a listener nobody outside the pod reaches: the
    /// operator binds it to localhost, see `--loglevel-addr`).
    pub log: Option<LogReload>,
    /// `/metrics` answers only requests with `Authorization: Bearer <the file's content>`
    /// (a Secret mounted as a file; read at each scrape, so a rotated Secret takes effect
    /// without a restart). The probes stay open: the kubelet sends no token.
    pub metrics_token_file: Option<std::path::PathBuf>,
}

impl From<Option<LogReload>> for AdminConfig {
    fn from(log: Option<LogReload>) -> Self {
        Self {
            log,
            metrics_token_file: None,
        }
    }
}

/// The admin routes: `GET /metrics`, `GET /livez`, `GET /readyz`, `GET /readyz/admission`, and
/// with `log` also
/// `GET /loglevel` (the filter in force) and `PUT /loglevel` (body: an `EnvFilter` string;
/// 200, or 400 when it does not parse).
pub fn admin_router(metrics: Metrics, ready: Readiness, cfg: impl Into<AdminConfig>) -> Router {
    let AdminConfig {
        log,
        metrics_token_file,
    } = cfg.into();
    let with_log = log.is_some();
    let mut router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/readyz/admission", get(readyz_admission));
    if with_log {
        router = router.route("/loglevel", get(get_loglevel).put(put_loglevel));
    }
    router
        // Nothing here takes a large body; the default (2 MiB) is far more than a filter.
        .layer(DefaultBodyLimit::max(MAX_FILTER_LEN))
        .with_state(AdminState {
            metrics,
            ready,
            log,
            metrics_token: metrics_token_file,
        })
}

/// Serves [`admin_router`] on `listener` until `shutdown` resolves, then drains connections.
pub fn serve_admin<S: Future<Output = ()> + Send + 'static>(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Readiness,
    cfg: impl Into<AdminConfig>,
    shutdown: S,
) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> {
    // The router is built here, so the future holds no `cfg` (whose type need not be Send).
    let router = admin_router(metrics, ready, cfg);
    Box::pin(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    })
}

/// Whether `headers` carry the bearer token in `file` (compared as SHA-256 digests, so the
/// comparison's time says nothing about the token). An unreadable or empty file admits nobody.
fn bearer_matches(headers: &axum::http::HeaderMap, file: &std::path::Path) -> bool {
    let Ok(token) = std::fs::read_to_string(file) else {
        tracing::warn!(file = %file.display(), "metrics token file unreadable: /metrics refused");
        return false;
    };
    let token = token.trim();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if !token.is_empty() => {
            let digest = |b: &str| ring::digest::digest(&ring::digest::SHA256, b.as_bytes());
            digest(g).as_ref() == digest(token).as_ref()
        }
        _ => false,
    }
}

async fn metrics_handler(State(s): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(file) = &s.metrics_token
        && !bearer_matches(&headers, file)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response();
    }
    s.metrics.set_ready(s.ready.is_ready());
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let missing = s.ready.reasons_not_ready();
    if missing.is_empty() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
            .into_response()
    }
}

/// Ready to answer admission reviews, on any replica (leader or standby): the readiness probe
/// of a deployment with the webhook, so its Service sends admission to every serving replica.
async fn readyz_admission(State(s): State<AdminState>) -> Response {
    if s.ready.admission_serving() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: admission webhook not serving\n",
        )
            .into_response()
    }
}

async fn get_loglevel(State(s): State<AdminState>) -> Response {
    match s.log.as_ref().map(LogReload::current) {
        Some(Ok(f)) => (StatusCode::OK, f).into_response(),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn put_loglevel(State(s): State<AdminState>, body: String) -> Response {
    let Some(log) = s.log.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match log.set_level(&body) {
        Ok(()) => {
            tracing::info!(filter = %body.trim(), "log filter changed");
            (StatusCode::OK, "ok").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reasons_in_order() {
        let r = Readiness::new();
        assert_eq!(
            r.reasons_not_ready(),
            ["crds_established", "caches_synced", "azure_token_obtained"]
        );
        r.set_caches_synced(true);
        assert_eq!(
            r.reasons_not_ready(),
            ["crds_established", "azure_token_obtained"]
        );
        r.set_crds_established(true);
        r.set_azure_token_obtained(true);
        assert!(r.is_ready());
        r.set_azure_token_obtained(false);
        assert!(!r.is_ready());
    }

    #[test]
    fn bad_filters_are_rejected() {
        let (_layer, reload) = reloadable_filter("info").unwrap();
        assert!(reload.set_level("foo=notalevel").is_err());
        assert!(reload.set_level(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
        assert_eq!(reload.current().unwrap(), "info");
        reload.set_level("warn,accessgrant_operator=debug").unwrap();
        // EnvFilter prints its directives most specific first.
        assert_eq!(reload.current().unwrap(), "accessgrant_operator=debug,warn");
    }
}
